package tests_test

import (
	"os"
	"testing"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
)

// TestMain stops the Redis Cluster that the redis-cluster backend's tests
// share.
func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }
