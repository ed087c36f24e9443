package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
)

// The Kafka cluster tests run the drill's consumer processes (this test
// binary, started with "consume") on three brokers: the real cluster of
// KAFKA_BROKERS when it names three or more (started with KAFKA_NODES=3
// scripts/kafka.sh start; its nodes are killed with SIGKILL and resumed
// through scripts/kafka.sh in KAFKA_STATE_DIR), else a three-broker kfake
// cluster in this process, whose nodes are removed and added back (a
// leader change, not a crash: kfake has no replicas to lose).

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "consume" {
		os.Exit(consumeMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// realCluster returns the brokers of KAFKA_BROKERS if it names three or
// more.
func realCluster() (string, bool) {
	v := strings.TrimSpace(os.Getenv("KAFKA_BROKERS"))
	return v, len(strings.Split(v, ",")) >= 3
}

// parallelOnOwnCluster runs t in parallel with the other cluster tests when
// each has a kfake cluster of its own; on a real cluster they run one after
// the other, since one's broker kill would disturb the other.
func parallelOnOwnCluster(t *testing.T) {
	if _, real := realCluster(); !real {
		t.Parallel()
	}
}

// clusterBroker returns the three-broker Kafka the cluster tests run on.
func clusterBroker(t *testing.T) broker {
	t.Helper()
	if v, ok := realCluster(); ok {
		state := os.Getenv("KAFKA_STATE_DIR")
		if state == "" {
			t.Fatalf("KAFKA_BROKERS names a cluster (%s) but KAFKA_STATE_DIR is not set: the test kills and resumes its nodes through scripts/kafka.sh, which needs the cluster's state dir", v)
		}
		script, err := findScript("scripts/kafka.sh")
		require.NoError(t, err)
		return &kafkaBroker{script: script, stateDir: state, nodes: len(strings.Split(v, ",")), bootstrap: v, log: t.Logf}
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.AllowAutoTopicCreation())
	require.NoError(t, err)
	t.Cleanup(c.Close)
	t.Logf("on a 3-broker kfake cluster (KAFKA_BROKERS does not name 3 brokers)")
	return &kfakeBroker{c: c, addrs: c.ListenAddrs()}
}

// kfakeBroker is a kfake cluster as a drill [broker].
type kfakeBroker struct {
	c     *kfake.Cluster
	addrs []string // at start: every node
	mu    sync.Mutex
	gone  int32 // node removed by Crash, -1 if none
	port  int
}

func (k *kfakeBroker) URL(params url.Values) string {
	return "kafka://" + strings.Join(k.addrs, ",") + "?" + params.Encode()
}

func (k *kfakeBroker) Describe() string {
	return "kfake, 3 brokers, at " + strings.Join(k.addrs, ",")
}

func (k *kfakeBroker) Crash(_ context.Context, topic string) (string, error) {
	node, addr, err := busiestLeader(k.addrs, topic)
	if err != nil {
		return "", err
	}
	_, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	port, _ := strconv.Atoi(portText)
	if err := k.c.RemoveNode(node); err != nil {
		return "", err
	}
	k.mu.Lock()
	k.gone, k.port = node, port
	k.mu.Unlock()
	return fmt.Sprintf("removed kfake node %d, leader of most partitions of %s", node, topic), nil
}

func (k *kfakeBroker) Recover(context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.port == 0 {
		return errors.New("nothing to recover")
	}
	_, _, err := k.c.AddNode(k.gone, k.port)
	k.port = 0
	return err
}

// Stop leaves the cluster to the test's cleanup.
func (k *kfakeBroker) Stop() error { return nil }

// newClusterDrill prepares a drill on the cluster of t with c's defaults
// filled in, closed when t ends.
func newClusterDrill(t *testing.T, c config) *drill {
	t.Helper()
	c.Broker, c.KafkaNodes, c.WorkDir = "kafka", 3, t.TempDir()
	c.setDefaults()
	require.NoError(t, c.validate())
	d, err := newDrill(context.Background(), c, clusterBroker(t))
	require.NoError(t, err)
	d.logf, d.out = t.Logf, io.Discard
	t.Cleanup(func() { d.close(false) })
	return d
}

// The broker leading most partitions of the main topic is killed mid-flow
// and comes back later: nothing is lost, dead-lettered wrongly or handled
// early, and the consumer, never restarted, recovers by itself.
func TestKafkaCluster_leaderLossMidFlow(t *testing.T) {
	parallelOnOwnCluster(t)
	d := newClusterDrill(t, config{
		Partitions:   6,
		Messages:     600,
		Kills:        0,
		Restarts:     1,
		Consumers:    1,
		Window:       20 * time.Second,
		BrokerDown:   8 * time.Second,
		Delays:       []time.Duration{time.Second, 2 * time.Second, 4 * time.Second},
		MaxAttempts:  4,
		Seed:         12,
		DrainTimeout: 3 * time.Minute,
	})
	res, err := d.run(context.Background())
	require.NoError(t, err)
	t.Logf("%d duplicate handlings (%d after the broker loss), %d duplicate dead letters, %d republished by the producer; drained %v after the broker came back",
		res.DupHandlings, res.DupAfterRestart, res.DupDeadLetters, res.Republished, res.DrainAfterLast.Round(time.Millisecond))
	require.Equal(t, 1, res.Restarts)
	require.True(t, res.ok(), "%+v", res)
}

// Three consumer processes with the same handler share the six partitions
// of the main topic and of every tier; when one is killed (SIGKILL, not
// restarted), the other two take its partitions over, and a message held in
// a tier while the partitions move is still handled once.
func TestKafkaCluster_threeRoutersSharePartitions(t *testing.T) {
	parallelOnOwnCluster(t)
	// Every message fails once and waits 25s in tier 1: longer than the
	// rebalance that the kill causes (a session timeout of 10s, then a
	// join), so that the partitions move while the messages are held.
	const tierDelay = 25 * time.Second
	d := newClusterDrill(t, config{
		Partitions:   6,
		Messages:     420, // published by the test itself: 300, a kill, 120
		Consumers:    3,
		Delays:       []time.Duration{tierDelay, tierDelay + time.Second},
		MaxAttempts:  3,
		Seed:         7,
		DrainTimeout: 3 * time.Minute,
	})
	ctx := context.Background()
	d.started = time.Now()
	stop := d.startConsumers(ctx, 3, false)
	t.Cleanup(stop)

	admin := newAdmin(t, d)
	groups := []string{d.topics.Group(d.topics.Main)}
	for _, tier := range d.topics.Tiers {
		groups = append(groups, d.topics.Group(tier))
	}
	waitShared(t, admin, groups, 3)

	before := d.messagesWith(300, func() plan { return plan{Fail: 1} })
	var gate sync.RWMutex
	require.NoError(t, d.produce(ctx, before, time.Second, &gate))
	// Every message failed on the main topic and waits in tier 1.
	waitFor(t, 2*time.Minute, "every message in tier 1", func() bool {
		require.NoError(t, d.track.poll())
		n := 0
		for _, h := range d.track.handlings {
			if h.Attempt == 1 && h.Step == stepFail {
				n++
			}
		}
		lag, err := d.inspect.Lag(ctx, d.topics.Main, groups[0])
		return err == nil && lag == 0 && n >= len(before)
	})
	for _, h := range d.track.handlings {
		require.Zero(t, h.Tier, "a tier message was handled before the kill: the machine is too slow for this test's %v tier", tierDelay)
	}

	killed := d.procs[0]
	at := time.Now()
	pid := killed.kill()
	d.record(fault{Kind: consumerKill, At: at, End: at, Detail: fmt.Sprintf("kill -9 of consumer 0 (pid %d)", pid)})
	waitShared(t, admin, groups, 2)
	t.Logf("partitions moved to the two survivors %v after the kill", time.Since(at).Round(time.Millisecond))
	require.True(t, time.Now().Before(at.Add(tierDelay)), "the rebalance took longer than the tier delay: nothing was held while it ran")

	after := d.messagesWith(120, func() plan { return plan{} })
	require.NoError(t, d.produce(ctx, after, time.Second, &gate))
	drained := d.waitDrained(ctx, time.Now().Add(d.c.DrainTimeout))
	stop()
	res, err := d.finish(ctx, drained)
	require.NoError(t, err)
	require.True(t, res.ok(), "%+v", res)

	// Held while the partitions moved, handled once.
	type key struct {
		uuid    string
		attempt int
	}
	tierRuns := map[key]int{}
	for _, h := range d.track.handlings {
		if h.Tier > 0 {
			tierRuns[key{h.UUID, h.Attempt}]++
			require.NotEqual(t, pid, h.PID, "the killed process handled a tier message")
		}
	}
	for k, n := range tierRuns {
		require.Equal(t, 1, n, "message %s handled %d times from tier 1", k.uuid, n)
	}
	require.Len(t, tierRuns, len(before))
	t.Logf("%d duplicate handlings on the main topic after the kill", res.DupHandlings)
}

func newAdmin(t *testing.T, d *drill) sarama.ClusterAdmin {
	t.Helper()
	hosts, _, _ := strings.Cut(strings.TrimPrefix(d.url, "kafka://"), "?")
	c := sarama.NewConfig()
	c.Version = sarama.V3_0_0_0
	admin, err := sarama.NewClusterAdmin(strings.Split(hosts, ","), c)
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close() })
	return admin
}

// waitShared waits until each group has members members that split the
// partitions of its topic between them: each member owns some, none owns
// one another owns, together they own all of them.
func waitShared(t *testing.T, admin sarama.ClusterAdmin, groups []string, members int) {
	t.Helper()
	var last string
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d members sharing the partitions of each group", members), func() bool {
		descs, err := admin.DescribeConsumerGroups(groups)
		if err != nil {
			last = err.Error()
			return false
		}
		for _, g := range descs {
			owned, ok := sharing(g, members)
			if !ok {
				last = fmt.Sprintf("group %s (%s): %v", g.GroupId, g.State, owned)
				return false
			}
		}
		last = ""
		return true
	}, &last)
}

// sharing returns the partitions each member of g owns, and whether
// members members share all 6 without overlap, each owning at least one.
func sharing(g *sarama.GroupDescription, members int) ([][]int32, bool) {
	var owned [][]int32
	seen := map[int32]bool{}
	overlap := false
	for _, m := range g.Members {
		a, err := m.GetMemberAssignment()
		if err != nil || a == nil {
			return owned, false
		}
		var ps []int32
		for _, list := range a.Topics {
			for _, p := range list {
				overlap = overlap || seen[p]
				seen[p] = true
				ps = append(ps, p)
			}
		}
		slices.Sort(ps)
		owned = append(owned, ps)
	}
	if g.State != "Stable" || len(owned) != members || overlap || len(seen) != 6 {
		return owned, false
	}
	for _, ps := range owned {
		if len(ps) == 0 {
			return owned, false
		}
	}
	return owned, true
}

// waitFor polls cond every 200ms until it holds, failing the test after
// timeout; detail, if given, says what was last seen.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool, detail ...*string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("waited %v for %s", timeout, what)
			for _, d := range detail {
				msg += "; last seen: " + *d
			}
			t.Fatal(msg)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
