// getstream reads a prefix through Go clientv3's KV.GetStream (etcd 3.7's RangeStream) and
// prints one line per chunk, then the merged response, so the differential tests can compare
// what a Go client sees from etcd and from Ballast.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func main() {
	endpoint := flag.String("endpoint", "127.0.0.1:2379", "the member to read from")
	prefix := flag.String("prefix", "", "the key prefix to read")
	rev := flag.Int64("rev", 0, "the revision to read at (0: the newest)")
	countOnly := flag.Bool("count-only", false, "ask for the count only")
	keysOnly := flag.Bool("keys-only", false, "ask for keys without values")
	flag.Parse()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{*endpoint},
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	defer cli.Close()
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if *rev > 0 {
		opts = append(opts, clientv3.WithRev(*rev))
	}
	if *countOnly {
		opts = append(opts, clientv3.WithCountOnly())
	}
	if *keysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := cli.KV.GetStream(ctx, *prefix, opts...)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	kvs, lastRev := 0, int64(0)
	for r := range stream {
		if err := r.Err(); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		first, last := "", ""
		if n := len(r.Kvs); n > 0 {
			first, last = string(r.Kvs[0].Key), string(r.Kvs[n-1].Key)
		}
		var hrev int64
		if r.Header != nil {
			hrev = r.Header.Revision
			lastRev = hrev
		}
		kvs += len(r.Kvs)
		fmt.Printf("chunk kvs=%d first=%q last=%q header=%v rev=%d more=%v count=%d\n",
			len(r.Kvs), first, last, r.Header != nil, hrev, r.More, r.Count)
	}
	fmt.Printf("total kvs=%d rev=%d\n", kvs, lastRev)
}
