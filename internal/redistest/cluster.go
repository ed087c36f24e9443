package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// EnvClusterAddrs names the environment variable that points tests at a
// Redis Cluster: the comma-separated host:port of one or more of its nodes.
const EnvClusterAddrs = "REDIS_CLUSTER_ADDRS"

// clusterTimeout bounds forming a cluster and waiting for it to be ready.
const clusterTimeout = 60 * time.Second

// ClusterConfig configures [StartCluster].
type ClusterConfig struct {
	// Masters is the number of masters, each serving a third (or so) of the
	// 16384 hash slots.
	//
	// Optional. Defaults to 3, the fewest redis-cli --cluster create takes.
	Masters int

	// ReplicasPerMaster is how many replicas each master has. With at
	// least one, losing a master is a failover; without, an outage of its
	// slots.
	//
	// Optional. Defaults to 0.
	ReplicasPerMaster int

	// NodeTimeout is the cluster-node-timeout: how long a node may not
	// answer before the others mark it failed (and one of its replicas
	// takes over). Low values make failovers quick and, on a busy machine,
	// spurious.
	//
	// Optional. Defaults to 15s, Redis's default.
	NodeTimeout time.Duration

	// ServerArgs are more redis-server arguments for every node. They come
	// after those that turn persistence off, so "--appendonly", "yes"
	// turns the append-only file on (a master without replicas then gets
	// its streams back when it restarts).
	//
	// Optional. Defaults to none.
	ServerArgs []string
}

// Cluster is a Redis Cluster of redis-server processes on 127.0.0.1 that
// this package started: one process and one directory per node.
type Cluster struct {
	dir   string
	nodes []*server
}

// StartCluster starts a cluster for t with config, waits until every node
// sees cluster_state:ok (and every replica is in sync with its master),
// and kills it when t ends. It fails t with how to get redis-server and
// redis-cli when they are not on PATH.
func StartCluster(t testing.TB, config ClusterConfig) *Cluster {
	t.Helper()
	c, err := startCluster(config)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(c.stop)
	return c
}

// Addrs returns the address of every node, masters first as the cluster
// was created (a failover changes which nodes are masters).
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.addr
	}
	return out
}

// Kill kills the node at addr with SIGKILL, as a crash would, and waits
// until the process has exited.
func (c *Cluster) Kill(addr string) error {
	n, err := c.node(addr)
	if err != nil {
		return err
	}
	n.kill()
	return nil
}

// Restart starts the node at addr again, on its port and with its
// nodes.conf, after [Cluster.Kill]. It rejoins the cluster by itself (a
// master that was failed over comes back as a replica of the replica that
// replaced it); wait for that with [Cluster.WaitReady].
func (c *Cluster) Restart(addr string) error {
	n, err := c.node(addr)
	if err != nil {
		return err
	}
	if n.running() {
		return fmt.Errorf("node %s is running", addr)
	}
	return n.start()
}

func (c *Cluster) node(addr string) (*server, error) {
	for _, n := range c.nodes {
		if n.addr == addr {
			return n, nil
		}
	}
	return nil, fmt.Errorf("no node %s in this cluster", addr)
}

// WaitReady waits until every running node sees cluster_state:ok and knows
// every node, and every running replica is in sync with its master.
func (c *Cluster) WaitReady(ctx context.Context) error {
	var running []string
	for _, n := range c.nodes {
		if n.running() {
			running = append(running, n.addr)
		}
	}
	return waitClusterReady(ctx, running, len(c.nodes))
}

// stop kills every node and removes the cluster's directory.
func (c *Cluster) stop() {
	for _, n := range c.nodes {
		n.kill()
	}
	_ = os.RemoveAll(c.dir)
}

func startCluster(config ClusterConfig) (*Cluster, error) {
	if config.Masters == 0 {
		config.Masters = 3
	}
	if config.NodeTimeout == 0 {
		config.NodeTimeout = 15 * time.Second
	}
	if config.Masters < 3 || config.ReplicasPerMaster < 0 || config.NodeTimeout < 0 {
		return nil, fmt.Errorf("cluster of %d masters with %d replicas each and node timeout %v: need at least 3 masters", config.Masters, config.ReplicasPerMaster, config.NodeTimeout)
	}
	server, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("cannot start a Redis Cluster: redis-server is not on PATH. Install it "+
			"(Debian/Ubuntu: apt-get install -y redis-server; version 6.2 or later) or set %s=host:port,... to a running cluster", EnvClusterAddrs)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("cannot start a Redis Cluster: redis-cli is not on PATH. Install it "+
			"(Debian/Ubuntu: apt-get install -y redis-tools) or set %s=host:port,... to a running cluster", EnvClusterAddrs)
	}
	dir, err := os.MkdirTemp("", "redistest-cluster-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir}
	ok := false
	defer func() {
		if !ok {
			c.stop()
		}
	}()

	total := config.Masters * (1 + config.ReplicasPerMaster)
	for i := range total {
		n, err := launchNode(server, filepath.Join(dir, strconv.Itoa(i)), config)
		if err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(config.ReplicasPerMaster), "--cluster-yes")
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("redis-cli %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	if err := c.WaitReady(ctx); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// launchNode starts one cluster node in dir on a port whose cluster bus
// port (port + 10000) is free too.
func launchNode(bin, dir string, config ClusterConfig) (*server, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var lastErr error
	for range 10 { // a free port can be taken between probe and bind
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		if port+10000 > 65535 || !portFree(port+10000) {
			lastErr = fmt.Errorf("cluster bus port %d of port %d is not free", port+10000, port)
			continue
		}
		args := append([]string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(config.NodeTimeout.Milliseconds(), 10),
		}, config.ServerArgs...)
		s, err := launch(bin, dir, port, args...)
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
	return nil, fmt.Errorf("cannot start a cluster node: %w", lastErr)
}

// waitClusterReady waits until each of addrs sees cluster_state:ok and
// knows nodes nodes, and each replica among them has its link to its
// master up.
func waitClusterReady(ctx context.Context, addrs []string, nodes int) error {
	var last error
	for {
		last = clusterReady(ctx, addrs, nodes)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis cluster %s not ready: %w", strings.Join(addrs, ","), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func clusterReady(ctx context.Context, addrs []string, nodes int) error {
	for _, addr := range addrs {
		if err := nodeReady(ctx, addr, nodes); err != nil {
			return fmt.Errorf("node %s: %w", addr, err)
		}
	}
	return nil
}

func nodeReady(ctx context.Context, addr string, nodes int) error {
	client := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
	defer client.Close()
	info, err := client.ClusterInfo(ctx).Result()
	if err != nil {
		return err
	}
	fields := infoFields(info)
	if fields["cluster_state"] != "ok" {
		return fmt.Errorf("cluster_state:%s", fields["cluster_state"])
	}
	if n := fields["cluster_known_nodes"]; n != strconv.Itoa(nodes) {
		return fmt.Errorf("knows %s nodes of %d", n, nodes)
	}
	repl, err := client.Info(ctx, "replication").Result()
	if err != nil {
		return err
	}
	fields = infoFields(repl)
	if fields["role"] == "slave" && fields["master_link_status"] != "up" {
		return fmt.Errorf("replica's link to its master is %s", fields["master_link_status"])
	}
	return nil
}

// infoFields reads the "key:value" lines of INFO and CLUSTER INFO.
func infoFields(info string) map[string]string {
	out := map[string]string{}
	for line := range strings.SplitSeq(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = v
		}
	}
	return out
}

// ClusterAddrs returns the seed addresses of a Redis Cluster for t, in this
// order: those of REDIS_CLUSTER_ADDRS (checked to answer and to see
// cluster_state:ok); else those of a cluster of three masters without
// replicas that it starts on first use in the test binary and that [Main]
// stops when the package's tests end. The tests of a package share that
// cluster, as they share a server (see [Addr]): name streams with [Name].
//
// It fails t when the package's TestMain does not run [Main], so that no
// cluster outlives its tests.
func ClusterAddrs(t testing.TB) []string {
	t.Helper()
	if v := strings.TrimSpace(os.Getenv(EnvClusterAddrs)); v != "" {
		var addrs []string
		for a := range strings.SplitSeq(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				addrs = append(addrs, a)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := clusterOK(ctx, addrs); err != nil {
			t.Fatalf("redistest: %s=%s: %v", EnvClusterAddrs, v, err)
		}
		return addrs
	}
	c, err := shared.get()
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return c.Addrs()
}

// clusterOK checks that addrs answer and that the first sees
// cluster_state:ok.
func clusterOK(ctx context.Context, addrs []string) error {
	if len(addrs) == 0 {
		return errors.New("no address")
	}
	for _, a := range addrs {
		if err := ping(a, 2*time.Second); err != nil {
			return fmt.Errorf("%s does not answer PING: %w", a, err)
		}
	}
	client := redis.NewClient(&redis.Options{Addr: addrs[0]})
	defer client.Close()
	info, err := client.ClusterInfo(ctx).Result()
	if err != nil {
		return fmt.Errorf("CLUSTER INFO on %s: %w", addrs[0], err)
	}
	if state := infoFields(info)["cluster_state"]; state != "ok" {
		return fmt.Errorf("%s sees cluster_state:%s", addrs[0], state)
	}
	return nil
}

// Main runs the tests of a package and then stops the cluster that
// [ClusterAddrs] started for them, if any. A package whose tests call
// ClusterAddrs calls it from its TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }
func Main(m *testing.M) int {
	shared.begin()
	defer shared.end()
	return m.Run()
}

// shared is the cluster that the tests of one test binary share. It is the
// one piece of process-wide state here: tests get it by [ClusterAddrs],
// and only while [Main] runs, which stops it.
var shared sharedCluster

type sharedCluster struct {
	mu      sync.Mutex
	inMain  bool
	cluster *Cluster
	err     error // of the first start, given to every later caller
}

func (s *sharedCluster) begin() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inMain = true
}

func (s *sharedCluster) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cluster != nil {
		s.cluster.stop()
	}
	s.inMain, s.cluster, s.err = false, nil, nil
}

func (s *sharedCluster) get() (*Cluster, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.inMain {
		return nil, fmt.Errorf("ClusterAddrs starts a Redis Cluster that lives until the package's tests end: "+
			"call os.Exit(redistest.Main(m)) from the package's TestMain, or set %s=host:port,... to a running cluster", EnvClusterAddrs)
	}
	if s.cluster == nil && s.err == nil {
		s.cluster, s.err = startCluster(ClusterConfig{})
	}
	return s.cluster, s.err
}

// portFree reports whether nothing listens on 127.0.0.1:port.
func portFree(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}
