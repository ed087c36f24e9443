// Package kafkatest gives tests a Kafka backend: the cluster named by the
// KAFKA_BROKERS environment variable (comma-separated host:port), else an
// embedded kfake broker started for the test. CI sets KAFKA_BROKERS to a
// real Apache Kafka broker started by scripts/kafka.sh.
//
// On a real cluster, KAFKA_REPLICATION_FACTOR (default 1) is the
// replication factor of the topics the backend creates: 3 on the 3-node
// cluster of KAFKA_NODES=3 scripts/kafka.sh start.
package kafkatest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
)

// Env is a Kafka to test on.
type Env struct {
	// Brokers are the bootstrap addresses.
	Brokers []string
	// Cluster is the embedded broker, or nil on a real cluster.
	Cluster *kfake.Cluster
}

// Real reports whether the tests run on a real cluster.
func (e Env) Real() bool { return e.Cluster == nil }

// Start returns the cluster of KAFKA_BROKERS, or starts a kfake broker that
// is stopped when the test ends.
func Start(t testing.TB) Env {
	t.Helper()
	if v := strings.TrimSpace(os.Getenv("KAFKA_BROKERS")); v != "" {
		if _, err := envReplicationFactor(); err != nil {
			t.Fatalf("kafkatest: %v", err)
		}
		return Env{Brokers: strings.Split(v, ",")}
	}
	return StartEmbedded(t)
}

// StartEmbedded starts a kfake broker that is stopped when the test ends,
// whatever KAFKA_BROKERS says: for tests that inject faults with kfake's
// ControlKey (a real broker cannot be told to fail a produce request).
func StartEmbedded(t testing.TB, opts ...kfake.Opt) Env {
	t.Helper()
	cluster, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.AllowAutoTopicCreation()}, opts...)...)
	if err != nil {
		t.Fatalf("start embedded kafka (kfake): %v", err)
	}
	t.Cleanup(cluster.Close)
	return Env{Brokers: cluster.ListenAddrs(), Cluster: cluster}
}

// SaramaConfig is a Sarama config tuned for quick joins and closes in
// tests: 300ms heartbeats, the 6s minimum session, 100ms fetch waits.
func SaramaConfig() *sarama.Config {
	c := kafka.DefaultSaramaConfig()
	c.Consumer.Group.Heartbeat.Interval = 300 * time.Millisecond
	c.Consumer.Group.Session.Timeout = 6 * time.Second
	c.Consumer.Group.Rebalance.Timeout = 10 * time.Second
	c.Consumer.MaxWaitTime = 100 * time.Millisecond
	c.Metadata.Retry.Backoff = 100 * time.Millisecond
	return c
}

// EnvReplicationFactor names the environment variable that sets the
// replication factor of the topics created on a real cluster.
const EnvReplicationFactor = "KAFKA_REPLICATION_FACTOR"

// Config returns a backend config for env with test tuning, topic creation
// allowed and replication factor 1 (on a real cluster,
// KAFKA_REPLICATION_FACTOR if set). Change it before [New].
func (e Env) Config() kafka.Config {
	return kafka.Config{
		Brokers:           e.Brokers,
		Sarama:            SaramaConfig(),
		CreateTopics:      true,
		ReplicationFactor: e.replicationFactor(),
		NackResendSleep:   50 * time.Millisecond,
		DrainTimeout:      5 * time.Second,
	}
}

// replicationFactor is 1 on kfake, else KAFKA_REPLICATION_FACTOR (default
// 1; [Start] fails the test on a bad value).
func (e Env) replicationFactor() int16 {
	if !e.Real() {
		return 1
	}
	n, err := envReplicationFactor()
	if err != nil {
		return 1
	}
	return n
}

func envReplicationFactor() (int16, error) {
	v := strings.TrimSpace(os.Getenv(EnvReplicationFactor))
	if v == "" {
		return 1, nil
	}
	n, err := strconv.ParseInt(v, 10, 16)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%s=%q is not a positive integer", EnvReplicationFactor, v)
	}
	return int16(n), nil
}

// New opens a backend with config, closed when the test ends.
func New(t testing.TB, config kafka.Config) *kafka.Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := kafka.New(ctx, config, watermill.NopLogger{})
	if err != nil {
		t.Fatalf("kafka backend on %v: %v (start a broker with scripts/kafka.sh, or unset KAFKA_BROKERS to use the embedded one)", config.Brokers, err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// Topic returns a topic name unique to this test and run.
func Topic(t testing.TB) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, t.Name())
	if len(name) > 80 {
		name = name[len(name)-80:]
	}
	return "t." + name + "." + watermill.NewShortUUID()[:8]
}
