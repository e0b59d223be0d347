// trace-sink receives the spans kube-apiserver exports over OTLP (--tracing-config-file) and,
// when stopped with SIGTERM or SIGINT, prints the latency of its etcd client calls by gRPC
// method. The apiserver's own etcd_request_duration_seconds histogram starts at 5 ms, too
// coarse to compare two stores whose calls mostly take less; the spans carry nanoseconds.
//
// Usage: trace-sink 127.0.0.1:4317 > summary
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// maxSpans bounds what is kept per method; a run of the control-plane script makes tens of
// thousands.
const maxSpans = 1 << 20

type sink struct {
	collectortrace.UnimplementedTraceServiceServer
	mu      sync.Mutex
	byName  map[string][]int64
	dropped int
}

func (s *sink) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				// otelgrpc names a client span by its method: etcdserverpb.KV/Range.
				if sp.GetKind() != tracepb.Span_SPAN_KIND_CLIENT || !strings.HasPrefix(sp.GetName(), "etcdserverpb.") {
					continue
				}
				d := int64(sp.GetEndTimeUnixNano()) - int64(sp.GetStartTimeUnixNano())
				if len(s.byName[sp.GetName()]) >= maxSpans {
					s.dropped++
					continue
				}
				s.byName[sp.GetName()] = append(s.byName[sp.GetName()], d)
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// report prints count, p50, p90 and p99 (nearest rank) in milliseconds for each method.
func (s *sink) report() {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.byName))
	for n := range s.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		d := s.byName[n]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		rank := func(q float64) float64 {
			i := int(q*float64(len(d))+0.999999) - 1
			if i < 0 {
				i = 0
			}
			return float64(d[i]) / 1e6
		}
		fmt.Printf("TRACE %s count=%d p50=%.3fms p90=%.3fms p99=%.3fms\n", n, len(d), rank(0.5), rank(0.9), rank(0.99))
	}
	if s.dropped > 0 {
		fmt.Printf("TRACE dropped=%d\n", s.dropped)
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: trace-sink host:port")
		os.Exit(2)
	}
	lis, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := &sink{byName: map[string][]int64{}}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, s)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		srv.GracefulStop()
	}()
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s.report()
}
