package storage

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.uber.org/zap"

	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

// freePort asks the kernel for a port nobody listens on.
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// runServer starts one member of the server under test ($STORAGE_SERVER: ballast, or etcd
// for the reference) with etcd's flags, in a fresh data directory, as the apiserver's own
// tests start an embedded etcd per test; it is killed when the test ends. The client
// records its calls, as the apiserver's test server does.
func runServer(t testing.TB, extra ...string) *kubernetes.Client {
	t.Helper()
	bin := os.Getenv("STORAGE_SERVER")
	if bin == "" {
		t.Fatal("STORAGE_SERVER names the server binary to test")
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	dir := t.TempDir()
	args := append([]string{
		"--name", "default",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default=" + peer,
	}, extra...)
	cmd := exec.Command(bin, args...)
	log, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = log.Close()
	})
	c, err := kubernetes.New(clientv3.Config{
		Endpoints:   []string{client},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Status(ctx, client)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			body, _ := os.ReadFile(log.Name())
			t.Fatalf("%s did not serve within 30s: %v\n%s", bin, err, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	recorder := storagetesting.NewKubernetesRecorder(c.Kubernetes)
	c.KV = storagetesting.NewKVRecorder(c.KV, recorder)
	c.Kubernetes = recorder
	return c
}
