package redistest_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
)

func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }

// TestClusterAddrs_servesEverySlot: the shared cluster takes keys of every
// slot through a cluster client, from three masters.
func TestClusterAddrs_servesEverySlot(t *testing.T) {
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: redistest.ClusterAddrs(t)})
	defer c.Close()
	ctx := context.Background()
	name := redistest.Name(t, "k")
	for i := range 50 {
		require.NoError(t, c.Set(ctx, name+string(rune('a'+i)), "1", time.Minute).Err())
	}
	shards, err := c.ClusterShards(ctx).Result()
	require.NoError(t, err)
	require.Len(t, shards, 3)
	masters := 0
	require.NoError(t, c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		masters++
		n, err := m.DBSize(ctx).Result()
		require.Positive(t, n, "keys spread over every master")
		return err
	}))
	require.Equal(t, 3, masters)
}

// TestStartCluster_withReplicas: a cluster of its own, each master with a
// replica in sync, stopped with the test.
func TestStartCluster_withReplicas(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	require.Len(t, c.Nodes, 6)
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	defer client.Close()
	ctx := context.Background()
	replicas := 0
	require.NoError(t, client.ForEachSlave(ctx, func(ctx context.Context, r *redis.Client) error {
		replicas++
		return r.Ping(ctx).Err()
	}))
	require.Equal(t, 3, replicas)
	c.Stop()
	for _, n := range c.Nodes {
		n.Kill() // idempotent
	}
}
