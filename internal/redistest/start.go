package redistest

import "testing"

// Start runs a redis-server of t's own on a free port, with persistence off,
// and kills it when t and its subtests end. Use it for tests that change the
// server (CONFIG SET, ACL SETUSER, REPLICAOF), which must not run on a shared
// one.
func Start(t testing.TB) string {
	t.Helper()
	return start(t)
}
