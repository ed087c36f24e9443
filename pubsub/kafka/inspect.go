package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/IBM/sarama"

	"github.com/retry-kafka/retry-kafka/internal/kafkaoffsets"
	"github.com/retry-kafka/retry-kafka/tiered"
)

var _ tiered.Inspector = (*Backend)(nil)

// inspector holds the client that [Backend.ListTopics] and [Backend.Lag]
// share, made on first use. It never asks for a topic's metadata in a way
// that would auto-create it.
type inspector struct {
	mu     sync.Mutex
	client sarama.Client
	admin  sarama.ClusterAdmin
	closed bool
}

func (in *inspector) get(b *Backend) (sarama.Client, sarama.ClusterAdmin, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return nil, nil, errors.New("backend closed")
	}
	if in.client == nil {
		client, err := sarama.NewClient(b.config.Brokers, b.SaramaConfig())
		if err != nil {
			return nil, nil, fmt.Errorf("kafka client for %v: %w", b.config.Brokers, err)
		}
		admin, err := sarama.NewClusterAdminFromClient(client)
		if err != nil {
			_ = client.Close()
			return nil, nil, fmt.Errorf("kafka admin for %v: %w", b.config.Brokers, err)
		}
		in.client, in.admin = client, admin
	}
	return in.client, in.admin, nil
}

// close closes the admin and with it the client. Idempotent.
func (in *inspector) close() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.closed = true
	if in.admin == nil {
		return nil
	}
	err := in.admin.Close()
	in.admin, in.client = nil, nil
	return err
}

// ListTopics returns, sorted, the names of the topics that start with
// prefix ("" lists every topic). Kafka's internal topics
// (__consumer_offsets, __transaction_state) are left out.
func (b *Backend) ListTopics(ctx context.Context, prefix string) ([]string, error) {
	_, admin, err := b.inspect.get(b)
	if err != nil {
		return nil, err
	}
	return withContext(ctx, func() ([]string, error) {
		meta, err := admin.DescribeTopics(nil) // nil: every topic
		if err != nil {
			return nil, fmt.Errorf("list topics on %v: %w", b.config.Brokers, err)
		}
		var names []string
		for _, m := range meta {
			if m.IsInternal || !strings.HasPrefix(m.Name, prefix) || !errors.Is(m.Err, sarama.ErrNoError) {
				continue
			}
			names = append(names, m.Name)
		}
		slices.Sort(names)
		return names, nil
	})
}

// Lag returns how many records of topic the consumer group
// ConsumerGroupPrefix+group has not consumed: per partition, the high
// watermark minus the group's committed offset (or minus the first offset
// still stored when the group committed none there, or its offset was
// deleted by retention), summed. A topic that does not exist has lag 0.
func (b *Backend) Lag(ctx context.Context, topic, group string) (int64, error) {
	if group == "" {
		return 0, errors.New("empty consumer group")
	}
	client, admin, err := b.inspect.get(b)
	if err != nil {
		return 0, err
	}
	return withContext(ctx, func() (int64, error) {
		partitions, err := kafkaoffsets.Partitions(admin, topic)
		if errors.Is(err, kafkaoffsets.ErrUnknownTopic) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		bounds, err := kafkaoffsets.Range(client, topic, partitions)
		if err != nil {
			return 0, err
		}
		committed, err := kafkaoffsets.Committed(admin, b.config.ConsumerGroupPrefix+group, topic, partitions)
		if err != nil {
			return 0, err
		}
		var lag int64
		for _, p := range partitions {
			lag += kafkaoffsets.Lag(bounds[p], committed[p])
		}
		return lag, nil
	})
}

// withContext runs fn, which does not take a context (Sarama's calls
// bound themselves with the client's timeouts), and returns early with
// ctx's error when ctx ends first; fn then finishes on its own.
func withContext[T any](ctx context.Context, fn func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := fn()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// Config returns the backend's config, with its defaults set. Change a
// copy, not the Sarama config it points to.
func (b *Backend) Config() Config { return b.config }

// SaramaConfig returns a new copy of the Sarama config the backend's own
// clients use (oldest offset for new groups, acks from every in-sync
// replica), with metadata requests that never auto-create a topic, for
// tools that talk to the same cluster, such as the dlq package.
func (b *Backend) SaramaConfig() *sarama.Config {
	c := b.config.saramaConfig()
	c.Metadata.AllowAutoTopicCreation = false
	return c
}
