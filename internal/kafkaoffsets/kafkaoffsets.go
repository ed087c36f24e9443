// Package kafkaoffsets reads where Kafka partitions begin and end and where
// consumer groups stand on them, with few round trips: one metadata request
// for a topic's partitions, one ListOffsets request per partition leader,
// one OffsetFetch per group. The Kafka backend's Inspector and the dlq
// package share it.
package kafkaoffsets

import (
	"errors"
	"fmt"
	"slices"

	"github.com/IBM/sarama"
)

// ErrUnknownTopic is returned by [Partitions] for a topic that does not
// exist.
var ErrUnknownTopic = errors.New("topic does not exist")

// Partitions returns the partition IDs of topic, sorted. It asks the
// cluster (one metadata request that never creates the topic), not the
// client's cache, so a topic created or deleted a moment ago is seen as it
// is. A missing topic gives an error wrapping [ErrUnknownTopic].
func Partitions(admin sarama.ClusterAdmin, topic string) ([]int32, error) {
	meta, err := admin.DescribeTopics([]string{topic})
	if err != nil {
		return nil, fmt.Errorf("describe topic %q: %w", topic, err)
	}
	for _, m := range meta {
		if m.Name != topic {
			continue
		}
		switch {
		case errors.Is(m.Err, sarama.ErrUnknownTopicOrPartition):
			return nil, fmt.Errorf("%w: %q", ErrUnknownTopic, topic)
		case !errors.Is(m.Err, sarama.ErrNoError):
			return nil, fmt.Errorf("describe topic %q: %w", topic, m.Err)
		}
		ids := make([]int32, 0, len(m.Partitions))
		for _, p := range m.Partitions {
			ids = append(ids, p.ID)
		}
		slices.Sort(ids)
		return ids, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownTopic, topic)
}

// At returns, for each partition, the offset that ListOffsets gives for
// ts: [sarama.OffsetOldest] (the first offset still stored),
// [sarama.OffsetNewest] (the offset the next record will get, the high
// watermark), or a Unix time in milliseconds (the first offset whose
// timestamp is at or after it; the high watermark when there is none).
// Partitions are asked in one request per leader; a stale leader is
// refreshed and asked again once.
func At(client sarama.Client, topic string, partitions []int32, ts int64) (map[int32]int64, error) {
	out := make(map[int32]int64, len(partitions))
	todo := partitions
	for try := 0; len(todo) > 0; try++ {
		if try > 0 {
			if err := client.RefreshMetadata(topic); err != nil {
				return nil, fmt.Errorf("refresh metadata of %q: %w", topic, err)
			}
		}
		retry, err := at(client, topic, todo, ts, out)
		if err != nil {
			return nil, err
		}
		if len(retry) > 0 && try == 1 {
			return nil, fmt.Errorf("list offsets of %q partitions %v: leaders keep moving", topic, retry)
		}
		todo = retry
	}
	if ts >= 0 {
		// A time after the last record gives -1: nothing at or after
		// it, so it sits at the high watermark.
		var missing []int32
		for p, o := range out {
			if o < 0 {
				missing = append(missing, p)
			}
		}
		if len(missing) > 0 {
			ends, err := At(client, topic, missing, sarama.OffsetNewest)
			if err != nil {
				return nil, err
			}
			for p, o := range ends {
				out[p] = o
			}
		}
	}
	return out, nil
}

// at asks each leader once and returns the partitions to ask again after
// a metadata refresh.
func at(client sarama.Client, topic string, partitions []int32, ts int64, out map[int32]int64) ([]int32, error) {
	type ask struct {
		broker *sarama.Broker
		req    *sarama.OffsetRequest
		parts  []int32
	}
	byLeader := map[int32]*ask{}
	var retry []int32
	for _, p := range partitions {
		leader, err := client.Leader(topic, p)
		if err != nil {
			if retriable(err) {
				retry = append(retry, p)
				continue
			}
			return nil, fmt.Errorf("leader of %s/%d: %w", topic, p, err)
		}
		a := byLeader[leader.ID()]
		if a == nil {
			a = &ask{broker: leader, req: sarama.NewOffsetRequest(client.Config().Version)}
			byLeader[leader.ID()] = a
		}
		a.req.AddBlock(topic, p, ts, 1)
		a.parts = append(a.parts, p)
	}
	for _, a := range byLeader {
		resp, err := a.broker.GetAvailableOffsets(a.req)
		if err != nil {
			_ = a.broker.Close() // reconnects on next use
			retry = append(retry, a.parts...)
			continue
		}
		for _, p := range a.parts {
			block := resp.GetBlock(topic, p)
			switch {
			case block == nil:
				retry = append(retry, p)
			case retriable(block.Err):
				retry = append(retry, p)
			case !errors.Is(block.Err, sarama.ErrNoError):
				return nil, fmt.Errorf("list offsets of %s/%d: %w", topic, p, block.Err)
			case len(block.Offsets) == 0:
				return nil, fmt.Errorf("list offsets of %s/%d: the broker answered no offset", topic, p)
			default:
				out[p] = block.Offsets[0]
			}
		}
	}
	return retry, nil
}

func retriable(err error) bool {
	return errors.Is(err, sarama.ErrNotLeaderForPartition) ||
		errors.Is(err, sarama.ErrLeaderNotAvailable) ||
		errors.Is(err, sarama.ErrUnknownTopicOrPartition) ||
		errors.Is(err, sarama.ErrOffsetNotAvailable) ||
		errors.Is(err, sarama.ErrFencedLeaderEpoch) ||
		errors.Is(err, sarama.ErrUnknownLeaderEpoch)
}

// Bounds is where a partition begins and ends.
type Bounds struct {
	// Start is the first offset still stored.
	Start int64
	// End is the offset the next record will get (the high watermark).
	End int64
}

// Len is the number of offsets from Start to End.
func (b Bounds) Len() int64 { return max(b.End-b.Start, 0) }

// Range returns the bounds of each partition of topic.
func Range(client sarama.Client, topic string, partitions []int32) (map[int32]Bounds, error) {
	starts, err := At(client, topic, partitions, sarama.OffsetOldest)
	if err != nil {
		return nil, err
	}
	ends, err := At(client, topic, partitions, sarama.OffsetNewest)
	if err != nil {
		return nil, err
	}
	out := make(map[int32]Bounds, len(partitions))
	for _, p := range partitions {
		out[p] = Bounds{Start: starts[p], End: ends[p]}
	}
	return out, nil
}

// Committed returns the offset group committed on each partition of topic,
// -1 where it committed none (and on every partition of a group that does
// not exist).
func Committed(admin sarama.ClusterAdmin, group, topic string, partitions []int32) (map[int32]int64, error) {
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: partitions})
	if err != nil {
		if errors.Is(err, sarama.ErrGroupIDNotFound) {
			return none(partitions), nil
		}
		return nil, fmt.Errorf("committed offsets of group %q on %q: %w", group, topic, err)
	}
	out := none(partitions)
	for _, p := range partitions {
		block := resp.GetBlock(topic, p)
		if block == nil {
			continue
		}
		switch {
		case errors.Is(block.Err, sarama.ErrNoError):
			out[p] = block.Offset
		case errors.Is(block.Err, sarama.ErrUnknownTopicOrPartition), errors.Is(block.Err, sarama.ErrGroupIDNotFound):
		default:
			return nil, fmt.Errorf("committed offset of group %q on %s/%d: %w", group, topic, p, block.Err)
		}
	}
	return out, nil
}

func none(partitions []int32) map[int32]int64 {
	out := make(map[int32]int64, len(partitions))
	for _, p := range partitions {
		out[p] = -1
	}
	return out
}

// Lag is how many records of a partition with bounds b a group whose
// committed offset is committed (-1: none) has not consumed: everything
// from the committed offset, or from the start when it committed none or
// its offset was deleted by retention.
func Lag(b Bounds, committed int64) int64 {
	from := committed
	if from < b.Start {
		from = b.Start
	}
	return max(b.End-from, 0)
}

// Commit commits offsets for group on topic as a client outside the group
// (no member ID, generation -1), which Kafka accepts for a group that has
// no members, such as a tool's own checkpoint group. It returns once the
// group coordinator stored every offset.
func Commit(client sarama.Client, group, topic string, offsets map[int32]int64) error {
	req := sarama.NewOffsetCommitRequest(client.Config(), group)
	for p, o := range offsets {
		req.AddBlock(topic, p, o, 0, "")
	}
	var last error
	for try := 0; try < 3; try++ {
		if try > 0 {
			if err := client.RefreshCoordinator(group); err != nil {
				last = err
				continue
			}
		}
		coordinator, err := client.Coordinator(group)
		if err != nil {
			last = err
			continue
		}
		resp, err := coordinator.CommitOffset(req)
		if err != nil {
			_ = coordinator.Close()
			last = err
			continue
		}
		last = nil
		for p := range offsets {
			kerr, ok := resp.Errors[topic][p]
			switch {
			case !ok:
				last = fmt.Errorf("commit of group %q on %s/%d: no answer", group, topic, p)
			case !errors.Is(kerr, sarama.ErrNoError):
				last = fmt.Errorf("commit of group %q on %s/%d: %w", group, topic, p, kerr)
			}
		}
		if last == nil {
			return nil
		}
		if !coordinatorMoved(last) {
			return last
		}
	}
	return last
}

func coordinatorMoved(err error) bool {
	return errors.Is(err, sarama.ErrNotCoordinatorForConsumer) ||
		errors.Is(err, sarama.ErrConsumerCoordinatorNotAvailable) ||
		errors.Is(err, sarama.ErrOffsetsLoadInProgress)
}
