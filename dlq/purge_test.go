package dlq_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/dlq"
)

// pause lets the broker's millisecond clock move on, so that a time
// tells messages written before it from those after.
func pause(t *testing.T) time.Time {
	t.Helper()
	start := time.Now()
	require.Eventually(t, func() bool { return time.Since(start) > 5*time.Millisecond }, time.Second, time.Millisecond)
	mid := time.Now()
	require.Eventually(t, func() bool { return time.Since(mid) > 5*time.Millisecond }, time.Second, time.Millisecond)
	return mid
}

func TestPurge_beforeATime(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		topics := b.handler("billing")
		b.manyDeadLetters(topics, 6)
		mid := pause(t)
		late := b.manyDeadLetters(topics, 3)

		dry, err := b.client.Purge(ctx, dlq.PurgeParams{Topic: topics.DLQ, Filter: dlq.Filter{To: mid}, DryRun: true})
		require.NoError(t, err)
		require.EqualValues(t, 6, dry.Deleted)
		require.Len(t, b.all(topics.DLQ, dlq.Filter{}), 9, "a dry run deletes nothing")

		res, err := b.client.Purge(ctx, dlq.PurgeParams{Topic: topics.DLQ, Filter: dlq.Filter{To: mid}})
		require.NoError(t, err)
		require.EqualValues(t, 6, res.Deleted)
		require.Equal(t, sorted(late), uuidsOf(b.all(topics.DLQ, dlq.Filter{})))

		res, err = b.client.Purge(ctx, dlq.PurgeParams{Topic: topics.DLQ})
		require.NoError(t, err)
		require.EqualValues(t, 3, res.Deleted, "no filter: everything")
		d, err := b.client.Depth(ctx, topics.DLQ)
		require.NoError(t, err)
		require.Zero(t, d.Messages)
	})
}

func TestPurge_filteredOnRedisDeletesExactlyTheSelection(t *testing.T) {
	b := newBroker(t, "redis")
	ctx := context.Background()
	topics := b.handler("billing")
	timeouts := b.deadLetters(topics, letter{Reason: "timeout"}, letter{Reason: "timeout"})
	kept := b.deadLetters(topics, letter{Reason: "card declined"})
	var progress []int64

	res, err := b.client.Purge(ctx, dlq.PurgeParams{Topic: topics.DLQ, Filter: dlq.Filter{Reason: "timeout"}, OnProgress: func(n int64) { progress = append(progress, n) }})
	require.NoError(t, err)
	require.EqualValues(t, len(timeouts), res.Deleted)
	require.Equal(t, []int64{2}, progress)
	require.Equal(t, kept, uuidsOf(b.all(topics.DLQ, dlq.Filter{})))

	_, err = b.client.Purge(ctx, dlq.PurgeParams{Topic: topics.DLQ, BeforeOffsets: map[int32]int64{0: 1}})
	require.ErrorIs(t, err, dlq.ErrNotSupported)
}

func TestPurge_kafkaRefusesAFilterAndDeletesBeforeOffsets(t *testing.T) {
	b := newBroker(t, "kafka")
	ctx := context.Background()
	topics := b.handler("billing")
	b.manyDeadLetters(topics, 10)

	for _, f := range []dlq.Filter{{Reason: "timeout"}, {Handler: "billing"}, {From: time.Now().Add(-time.Hour)}, {UUID: "x"}} {
		_, err := b.client.Purge(ctx, dlq.PurgeParams{Topic: topics.DLQ, Filter: f})
		require.ErrorIs(t, err, dlq.ErrNotSupported, "filter %s", f)
		require.ErrorContains(t, err, "DeleteRecords")
		require.ErrorContains(t, err, "only lose a prefix")
	}
	require.Len(t, b.all(topics.DLQ, dlq.Filter{}), 10, "a refused purge deleted nothing")

	var p0 []*dlq.Message
	for _, m := range b.all(topics.DLQ, dlq.Filter{}) {
		if m.Partition == 0 {
			p0 = append(p0, m)
		}
	}
	require.NotEmpty(t, p0)
	cut := p0[len(p0)/2].Offset
	res, err := b.client.Purge(ctx, dlq.PurgeParams{Topic: topics.DLQ, BeforeOffsets: map[int32]int64{0: cut}})
	require.NoError(t, err)
	require.EqualValues(t, cut-p0[0].Offset, res.Deleted)
	require.Equal(t, cut, res.Starts[0])
	for _, m := range b.all(topics.DLQ, dlq.Filter{}) {
		if m.Partition == 0 {
			require.GreaterOrEqual(t, m.Offset, cut)
		}
	}
	require.Len(t, b.all(topics.DLQ, dlq.Filter{}), 10-int(res.Deleted), "partition 1 kept everything")

	_, err = b.client.Purge(ctx, dlq.PurgeParams{Topic: topics.DLQ, BeforeOffsets: map[int32]int64{7: 1}})
	require.ErrorContains(t, err, "no partition 7")
	_, err = b.client.Purge(ctx, dlq.PurgeParams{Topic: topics.DLQ, BeforeOffsets: map[int32]int64{0: 1}, Filter: dlq.Filter{To: time.Now()}})
	require.ErrorContains(t, err, "use one")
}
