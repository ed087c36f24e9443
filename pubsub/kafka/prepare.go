package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// Topic configs the backend sets.
const (
	configTimestampType = "message.timestamp.type"
	logAppendTime       = "LogAppendTime"
	configMinISR        = "min.insync.replicas"
)

// Prepare checks the main topic (creating it when Config.CreateTopics
// allows) and creates each missing tier and dead-letter topic with the main
// topic's partition count and Config.ReplicationFactor. It returns when it
// is done or ctx ends; against brokers that do not answer the error wraps
// [ErrNoAnswer].
//
// Tier topics are created with message.timestamp.type=LogAppendTime, so
// that a tier record's timestamp is the broker's append time: the holding
// subscriber clamps a due time to it + the tier's delay, and forged due
// times cannot stack up behind each other. A tier topic that exists with
// CreateTime is altered to LogAppendTime (it is this library's topic); if
// that is refused (not authorized), Prepare logs it at Error and goes on,
// and the tier's clamp counts from each record's receipt instead.
//
// Tier and dead-letter topics that Prepare creates with a replication
// factor of 3 or more get min.insync.replicas=2: with acks=all, a copy is
// then confirmed only once two replicas have it, and one broker may be
// lost without stopping the copies. With a smaller or the broker's default
// (-1) replication factor, the broker's min.insync.replicas applies. Topics
// that exist keep their replication settings.
func (b *Backend) Prepare(ctx context.Context, topics tiered.Topics) error {
	_, err := await(ctx, func() (struct{}, error) { return struct{}{}, b.prepare(ctx, topics) }, nil)
	if err != nil {
		return fmt.Errorf("prepare the topics of handler %q on kafka %v: %w", topics.Handler, b.config.Brokers, err)
	}
	return nil
}

func (b *Backend) prepare(ctx context.Context, topics tiered.Topics) error {
	admin, err := b.clusterAdmin()
	if err != nil {
		return err
	}
	partitions, err := partitionCount(admin, topics.Main)
	if err != nil {
		return err
	}
	if partitions == 0 {
		if !b.config.CreateTopics {
			return fmt.Errorf("main topic %q does not exist on %v: create it, or set Config.CreateTopics (create_topics=true in the URL)", topics.Main, b.config.Brokers)
		}
		partitions = b.config.MainTopicPartitions
		if _, err := b.create(admin, topics.Main, partitions, nil); err != nil {
			return err
		}
	}
	for _, t := range topics.Tiers {
		if err := ctx.Err(); err != nil {
			return err
		}
		configs := b.copyTopicConfigs()
		configs[configTimestampType] = ptr(logAppendTime)
		created, err := b.create(admin, t, partitions, configs)
		if err != nil {
			return err
		}
		ok := created || b.ensureLogAppendTime(admin, t)
		b.mu.Lock()
		b.appendTimes[t] = ok
		b.mu.Unlock()
	}
	_, err = b.create(admin, topics.DLQ, partitions, b.copyTopicConfigs())
	return err
}

// copyTopicConfigs are the configs of the tier and dead-letter topics
// Prepare creates.
func (b *Backend) copyTopicConfigs() map[string]*string {
	configs := map[string]*string{}
	if n := minInsyncReplicas(b.config.ReplicationFactor); n != "" {
		configs[configMinISR] = ptr(n)
	}
	return configs
}

func ptr(s string) *string { return &s }

// partitionCount returns the partition count of topic, 0 when it does not
// exist.
func partitionCount(admin sarama.ClusterAdmin, topic string) (int32, error) {
	meta, err := admin.DescribeTopics([]string{topic})
	if err != nil {
		return 0, fmt.Errorf("describe topic %q: %w", topic, err)
	}
	for _, m := range meta {
		if m.Name != topic {
			continue
		}
		switch {
		case errors.Is(m.Err, sarama.ErrUnknownTopicOrPartition):
			return 0, nil
		case m.Err != sarama.ErrNoError:
			return 0, fmt.Errorf("describe topic %q: %w", topic, m.Err)
		}
		return int32(len(m.Partitions)), nil
	}
	return 0, nil
}

// create creates topic and reports whether it did (false: it existed).
func (b *Backend) create(admin sarama.ClusterAdmin, topic string, partitions int32, configs map[string]*string) (bool, error) {
	err := admin.CreateTopic(topic, &sarama.TopicDetail{
		NumPartitions:     partitions,
		ReplicationFactor: b.config.ReplicationFactor,
		ConfigEntries:     configs,
	}, false)
	if err == nil {
		fields := watermill.LogFields{"topic": topic, "partitions": partitions, "replication_factor": b.config.ReplicationFactor}
		for k, v := range configs {
			fields[k] = *v
		}
		b.logger.Info("Created Kafka topic", fields)
		return true, nil
	}
	if errors.Is(err, sarama.ErrTopicAlreadyExists) {
		return false, nil
	}
	return false, fmt.Errorf("create topic %q: %w", topic, err)
}

// ensureLogAppendTime makes an existing tier topic's timestamps the
// broker's append times, and reports whether they are.
func (b *Backend) ensureLogAppendTime(admin sarama.ClusterAdmin, topic string) bool {
	fields := watermill.LogFields{"topic": topic}
	if isLogAppendTime(admin, topic) {
		return true
	}
	err := admin.IncrementalAlterConfig(sarama.TopicResource, topic, map[string]sarama.IncrementalAlterConfigsEntry{
		configTimestampType: {Operation: sarama.IncrementalAlterConfigsOperationSet, Value: ptr(logAppendTime)},
	}, false)
	if err != nil {
		b.logger.Error("Cannot set message.timestamp.type=LogAppendTime on an existing tier topic: forged due times are clamped from each record's receipt, not its append time; set it by hand or allow AlterConfigs", err, fields)
		return false
	}
	b.logger.Info("Set message.timestamp.type=LogAppendTime on an existing tier topic", fields)
	return true
}

func isLogAppendTime(admin sarama.ClusterAdmin, topic string) bool {
	entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{configTimestampType}})
	if err != nil {
		return false
	}
	for _, e := range entries {
		if e.Name == configTimestampType {
			return e.Value == logAppendTime
		}
	}
	return false
}

// logAppendTime reports whether topic's record timestamps are the
// broker's append times: known from Prepare, else asked (and false when
// the broker does not say within a few seconds).
func (b *Backend) logAppendTime(ctx context.Context, topic string) bool {
	b.mu.Lock()
	known, ok := b.appendTimes[topic]
	b.mu.Unlock()
	if ok {
		return known
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := await(ctx, func() (bool, error) {
		admin, err := b.clusterAdmin()
		if err != nil {
			return false, err
		}
		return isLogAppendTime(admin, topic), nil
	}, nil)
	if err != nil {
		return false
	}
	if !v {
		b.logger.Info("Tier topic's timestamps are not LogAppendTime: its due times are clamped from each record's receipt (Prepare sets it)", watermill.LogFields{"topic": topic})
	}
	b.mu.Lock()
	b.appendTimes[topic] = v
	b.mu.Unlock()
	return v
}

func (b *Backend) clusterAdmin() (sarama.ClusterAdmin, error) {
	b.mu.Lock()
	admin, closed := b.admin, b.closed
	b.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if admin != nil {
		return admin, nil
	}
	// Not under the lock: this asks the brokers for the controller. The
	// admin shares the backend's client and is never closed itself
	// (closing it would close the client).
	admin, err := sarama.NewClusterAdminFromClient(b.client)
	if err != nil {
		return nil, fmt.Errorf("kafka admin for %v: %w", b.config.Brokers, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.admin == nil {
		b.admin = admin
	}
	return b.admin, nil
}

// minInsyncReplicas is the min.insync.replicas Prepare gives the tier and
// dead-letter topics it creates with replication factor rf, or "" for the
// broker's.
func minInsyncReplicas(rf int16) string {
	if rf >= 3 {
		return strconv.Itoa(2)
	}
	return ""
}
