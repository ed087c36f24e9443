package redistest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// EnvClusterAddrs names the environment variable that points tests at a
// Redis Cluster: the addresses of some of its nodes, comma-separated
// ("10.0.0.1:7000,10.0.0.2:7000").
const EnvClusterAddrs = "REDIS_CLUSTER_ADDRS"

// clusterTimeout bounds creating a cluster and waiting until it serves
// every slot.
const clusterTimeout = 60 * time.Second

// Cluster is a Redis Cluster that this package started: redis-server
// nodes with --cluster-enabled on free ports (Redis 7.0 or later, for
// --cluster-port), joined by redis-cli --cluster create.
type Cluster struct {
	// Nodes are the cluster's servers, masters first.
	Nodes []*Server

	dir string
}

// Addrs returns the address of every node.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr
	}
	return addrs
}

// Node returns the node listening on addr, or nil.
func (c *Cluster) Node(addr string) *Server {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// Stop kills every node and removes their files. It is safe to call more
// than once.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		n.Kill()
	}
	_ = os.RemoveAll(c.dir)
}

// StartCluster starts a cluster of masters masters with replicas replicas
// each (redis-cli --cluster-replicas), for t alone, and stops it when t ends.
// It returns once every node reports cluster_state:ok, every slot is
// served, and every replica is in sync with its master. Use it for tests
// that kill nodes; others share [ClusterAddrs].
func StartCluster(t testing.TB, masters, replicas int) *Cluster {
	t.Helper()
	c, err := startCluster(masters, replicas)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

// shared is the cluster that [ClusterAddrs] starts for a whole test
// binary, and [Main] stops: starting one takes seconds, too long for every
// test. It is the package's only state, and lives in test binaries only.
var shared struct {
	mu      sync.Mutex
	main    bool // Main runs the tests
	cluster *Cluster
	err     error
}

// ClusterAddrs returns the addresses of a Redis Cluster to test against:
// those of REDIS_CLUSTER_ADDRS, else those of a 3-master cluster without
// replicas that it starts on first use and that lives until the test
// binary ends (the package's TestMain must call [Main], which stops it).
// It never skips a test. The cluster is shared, so tests name their streams
// with [Name] and delete what matches [Pattern] on every master
// (redis.ClusterClient.ForEachMaster) when they end.
func ClusterAddrs(t testing.TB) []string {
	t.Helper()
	if v := strings.TrimSpace(os.Getenv(EnvClusterAddrs)); v != "" {
		addrs := strings.Split(v, ",")
		for _, addr := range addrs {
			if err := ping(addr, 2*time.Second); err != nil {
				t.Fatalf("redistest: %s names %s, which does not answer PING: %v", EnvClusterAddrs, addr, err)
			}
		}
		return addrs
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.main {
		t.Fatalf("redistest: ClusterAddrs starts a cluster for the whole test binary, which redistest.Main stops: " +
			"add func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) } to the package's tests")
	}
	if shared.cluster == nil && shared.err == nil {
		shared.cluster, shared.err = startCluster(3, 0)
	}
	if shared.err != nil {
		t.Fatalf("redistest: %v", shared.err)
	}
	return shared.cluster.Addrs()
}

// Main runs the tests of m, then stops the cluster that [ClusterAddrs]
// started, if any. Call it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }
func Main(m *testing.M) int {
	shared.mu.Lock()
	shared.main = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.cluster != nil {
		shared.cluster.Stop()
		shared.cluster = nil
	}
	return code
}

func startCluster(masters, replicas int) (*Cluster, error) {
	if masters < 3 {
		return nil, fmt.Errorf("a Redis Cluster needs at least 3 masters, not %d", masters)
	}
	bin, err := serverBinary()
	if err != nil {
		return nil, err
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("redis-cli is not on PATH (it comes with redis-server: apt-get install -y redis-server), or set %s", EnvClusterAddrs)
	}
	dir, err := os.MkdirTemp("", "redistest-cluster-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir}
	fail := func(err error) (*Cluster, error) {
		c.Stop()
		return nil, err
	}
	for range masters * (1 + replicas) {
		srv, err := startServer(dir, bin, true)
		if err != nil {
			return fail(err)
		}
		c.Nodes = append(c.Nodes, srv)
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	// redis-cli makes the first nodes masters and the rest their
	// replicas.
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", fmt.Sprint(replicas), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("redis-cli --cluster create: %v: %s", err, out))
	}
	if err := waitClusterOK(ctx, c.Addrs(), replicas); err != nil {
		return fail(err)
	}
	return c, nil
}

// waitClusterOK waits until every node of addrs knows them all, reports
// cluster_state:ok with every slot served and, with replicas, until every
// replica's link to its master is up and every node lists each master's
// replicas in CLUSTER SLOTS (which leaves out replicas it thinks have no
// data yet).
func waitClusterOK(ctx context.Context, addrs []string, replicas int) error {
	var last error
	for {
		last = clusterOK(ctx, addrs, replicas)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the cluster %v is not ready: %w", addrs, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func clusterOK(ctx context.Context, addrs []string, replicas int) error {
	for _, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		info, err := c.ClusterInfo(ctx).Result()
		var slots []redis.ClusterSlot
		if err == nil && replicas > 0 {
			var repl string
			repl, err = c.Info(ctx, "replication").Result()
			info += repl
			if err == nil {
				slots, err = c.ClusterSlots(ctx).Result()
			}
		}
		_ = c.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", addr, err)
		}
		for _, s := range slots {
			if len(s.Nodes) != 1+replicas {
				return fmt.Errorf("%s: CLUSTER SLOTS lists %d nodes for slots %d-%d", addr, len(s.Nodes), s.Start, s.End)
			}
		}
		fields := infoFields(info)
		for k, want := range map[string]string{
			"cluster_state":       "ok",
			"cluster_slots_ok":    "16384",
			"cluster_known_nodes": fmt.Sprint(len(addrs)),
		} {
			if fields[k] != want {
				return fmt.Errorf("%s: %s is %q, not %q", addr, k, fields[k], want)
			}
		}
		if fields["role"] == "slave" && fields["master_link_status"] != "up" {
			return fmt.Errorf("%s: replica's master_link_status is %q", addr, fields["master_link_status"])
		}
	}
	return nil
}

// infoFields reads the "key:value" lines of CLUSTER INFO or INFO.
func infoFields(info string) map[string]string {
	fields := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok {
			fields[k] = v
		}
	}
	return fields
}
