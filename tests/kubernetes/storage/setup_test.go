package storage

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"google.golang.org/grpc/grpclog"

	"k8s.io/apimachinery/pkg/api/apitesting"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apiserver/pkg/apis/example"
	examplev1 "k8s.io/apiserver/pkg/apis/example/v1"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/etcd3"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/apiserver/pkg/storage/value"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/utils/clock"
)

var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
)

// What the store writes before each object, so the tests can see transformations.
const valuePrefix = "test!"

func init() {
	metav1.AddToGroupVersion(scheme, metav1.SchemeGroupVersion)
	utilruntime.Must(example.AddToScheme(scheme))
	utilruntime.Must(examplev1.AddToScheme(scheme))
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))
}

// etcdStore is what etcd3.New returns, as far as the tests use it.
type etcdStore interface {
	storage.Interface
	CompactRevision() int64
	Close()
	EnableResourceSizeEstimation(storage.KeysFunc) error
}

// swappable is the store's transformer: a prefix transformer the tests may replace while the
// store runs (the store and its watcher read it on every call).
type swappable struct {
	mu      sync.RWMutex
	current value.Transformer
}

func (s *swappable) get() value.Transformer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.current
}

func (s *swappable) set(t value.Transformer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.current = t
}

func (s *swappable) TransformFromStorage(ctx context.Context, data []byte, dc value.Context) ([]byte, bool, error) {
	return s.get().TransformFromStorage(ctx, data, dc)
}

func (s *swappable) TransformToStorage(ctx context.Context, data []byte, dc value.Context) ([]byte, error) {
	return s.get().TransformToStorage(ctx, data, dc)
}

// failing makes a codec or transformer fail on demand.
type failing struct{ on atomic.Bool }

func (f *failing) setFailing(on bool) { f.on.Store(on) }

type failingTransformer struct {
	value.Transformer
	failing
}

func (f *failingTransformer) TransformFromStorage(ctx context.Context, data []byte, dc value.Context) ([]byte, bool, error) {
	if f.on.Load() {
		return nil, false, errors.New("synthetic error")
	}
	return f.Transformer.TransformFromStorage(ctx, data, dc)
}

type failingCodec struct {
	runtime.Codec
	failing
}

func (f *failingCodec) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	if f.on.Load() {
		return nil, nil, errors.New("synthetic error")
	}
	return f.Codec.Decode(data, defaults, into)
}

type setup struct {
	store       etcdStore
	client      *kubernetes.Client
	transformer *swappable
	codec       runtime.Codec
}

type option func(*options)

type options struct {
	codec       runtime.Codec
	transformer value.Transformer
	prefix      string
	serverFlags []string
}

func withCodec(c runtime.Codec) option           { return func(o *options) { o.codec = c } }
func withTransformer(t value.Transformer) option { return func(o *options) { o.transformer = t } }
func withPrefix(p string) option                 { return func(o *options) { o.prefix = p } }
func withServerFlags(f ...string) option         { return func(o *options) { o.serverFlags = f } }
func testCodec() runtime.Codec                   { return apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion) }
func newPod() runtime.Object                     { return &example.Pod{} }
func newPodList() runtime.Object                 { return &example.PodList{} }
func prefixTransformer() *storagetesting.PrefixTransformer {
	return storagetesting.NewPrefixTransformer([]byte(valuePrefix), false)
}

// testSetup starts a server and an etcd3 store of example Pods on it, configured as the
// apiserver's own storage tests configure theirs.
func testSetup(t *testing.T, opts ...option) (context.Context, *setup) {
	o := options{codec: testCodec(), transformer: prefixTransformer()}
	for _, opt := range opts {
		opt(&o)
	}
	client := runServer(t, o.serverFlags...)
	versioner := storage.APIObjectVersioner{}
	compactor := etcd3.NewCompactor(client.Client, 0, clock.RealClock{}, nil)
	t.Cleanup(compactor.Stop)
	lease := etcd3.NewDefaultLeaseManagerConfig()
	// The default reuse window outlasts the tests' timeouts.
	lease.ReuseDurationSeconds = 1
	tr := &swappable{current: o.transformer}
	s, err := etcd3.New(client, compactor, o.codec, newPod, newPodList, o.prefix, "/pods/",
		schema.GroupResource{Resource: "pods"}, tr, lease, etcd3.NewDefaultDecoder(o.codec, versioner), versioner)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return context.Background(), &setup{store: s, client: client, transformer: tr, codec: o.codec}
}

// withPrefixTransformer lets a test swap the store's prefix transformer for a modified copy.
type withPrefixTransformer struct {
	storage.Interface
	tr *swappable
}

func (s *withPrefixTransformer) UpdatePrefixTransformer(modify storagetesting.PrefixTransformerModifier) func() {
	orig := s.tr.get()
	copied := *orig.(*storagetesting.PrefixTransformer)
	s.tr.set(modify(&copied))
	return func() { s.tr.set(orig) }
}

func (s *setup) prefixed() *withPrefixTransformer {
	return &withPrefixTransformer{Interface: s.store, tr: s.transformer}
}

// withTransformerOverride lets a test wrap the store's transformer.
type withTransformerOverride struct {
	storage.Interface
	tr *swappable
}

func (s *withTransformerOverride) UpdateTransformer(modify storagetesting.TransformerModifier) func() {
	orig := s.tr.get()
	s.tr.set(modify(orig))
	return func() { s.tr.set(orig) }
}

func (s *setup) overridable() *withTransformerOverride {
	return &withTransformerOverride{Interface: s.store, tr: s.transformer}
}

// checkStored: what the store wrote under key is the transformer's prefix and a Pod.
func (s *setup) checkStored() storagetesting.KeyValidation {
	return func(ctx context.Context, t *testing.T, key string) {
		resp, err := s.client.KV.Get(ctx, key)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		if len(resp.Kvs) == 0 {
			t.Fatalf("nothing stored under %s", key)
		}
		v := resp.Kvs[0].Value
		if !strings.HasPrefix(string(v), valuePrefix) {
			t.Fatalf("stored value of %s lacks the transformer's prefix: %q", key, v)
		}
		obj, err := runtime.Decode(s.codec, v[len(valuePrefix):])
		if err != nil {
			t.Fatalf("stored value of %s does not decode: %v", key, err)
		}
		if _, ok := obj.(*example.Pod); !ok {
			t.Fatalf("stored value of %s is a %T, not a Pod", key, obj)
		}
	}
}

// increaseRV writes an unrelated key, returning the new revision.
func (s *setup) increaseRV() storagetesting.IncreaseRVFunc {
	return func(ctx context.Context, t *testing.T) int64 {
		resp, err := s.client.KV.Put(ctx, "increaseRV", "ok")
		if err != nil {
			t.Fatalf("put increaseRV: %v", err)
		}
		return resp.Header.Revision
	}
}

// compaction compacts the server to a resource version, as the apiserver's compactor does,
// and waits until the store has seen it when it watches the compact key.
func (s *setup) compaction() storagetesting.Compaction {
	return func(ctx context.Context, t *testing.T, resourceVersion string) {
		rv, err := storage.APIObjectVersioner{}.ParseResourceVersion(resourceVersion)
		if err != nil {
			t.Fatal(err)
		}
		var current int64
		current, _, _, err = etcd3.Compact(ctx, s.client.Client, current, int64(rv))
		if err != nil {
			_, _, _, err = etcd3.Compact(ctx, s.client.Client, current, int64(rv))
		}
		if err != nil {
			t.Fatal(err)
		}
		if utilfeature.DefaultFeatureGate.Enabled(features.ListFromCacheSnapshot) {
			deadline := time.Now().Add(30 * time.Second)
			for s.store.CompactRevision() != int64(rv) {
				if time.Now().After(deadline) {
					t.Fatalf("the store never saw compaction to %d", rv)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
}

// recorder of the client's reads (for the paging tests' call counts).
func (s *setup) kv() *storagetesting.KVRecorder {
	return s.client.KV.(*storagetesting.KVRecorder)
}

func (s *setup) lists() *storagetesting.KubernetesRecorder {
	return s.client.Kubernetes.(*storagetesting.KubernetesRecorder)
}

// keys lists every key under the store's resource prefix (what the store's size estimate
// counts).
func (s *setup) keys(ctx context.Context) ([]string, error) {
	resp, err := s.client.KV.Get(ctx, "/pods/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, string(kv.Key))
	}
	return out, nil
}
