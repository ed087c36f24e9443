package redisstream

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// topologyRefresh is how often a backend on a Redis Cluster has its client
// reload which master serves which hash slot.
//
// go-redis v9 reloads its slot map on MOVED and ASK replies, and otherwise
// only every ClusterOptions.ClusterStateReloadInterval (60s by default). A
// master that died answers nothing, so once a replica has taken over its
// slots the client would still send their commands to the dead master, for
// up to a minute (go-redis issue 3979): publishing, reading and acking on
// those streams would stop for that long after every failover. Reloading
// every second bounds that at the cluster's own failover time plus a
// second, for the cost of one CLUSTER SLOTS a second.
const topologyRefresh = time.Second

// refreshTopology reloads client's slot map every topologyRefresh until
// stop is closed, then closes done.
func refreshTopology(client *redis.ClusterClient, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	ticker := time.NewTicker(topologyRefresh)
	defer ticker.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ticker.C:
			client.ReloadState(context.Background()) // asynchronous, coalesced
		}
	}
}
