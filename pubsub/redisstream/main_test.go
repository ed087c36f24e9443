package redisstream_test

import (
	"os"
	"testing"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
)

// TestMain stops the Redis Cluster that the cluster tests start on first
// use (unless REDIS_CLUSTER_ADDRS names one) once every test ended.
func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }
