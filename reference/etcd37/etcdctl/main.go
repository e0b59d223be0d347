// etcdctl of the pinned release, unchanged: its own entry point.
package main

import "go.etcd.io/etcd/etcdctl/v3/ctlv3"

func main() {
	ctlv3.MustStart()
}
