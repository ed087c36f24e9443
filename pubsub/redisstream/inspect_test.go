package redisstream_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
)

// The Inspector's contract is tested on every backend in tests/; these
// are the Redis-only cases.

func TestInspector_lagCountsPastDeletedEntries(t *testing.T) {
	ctx := context.Background()
	client := newClient(t)
	b := newBackend(t, client, redisstream.Config{ConsumerGroupPrefix: "app."}, nil)
	stream := redistest.Name(t, "lag")
	var ids []string
	for range 6 {
		id, err := client.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: map[string]any{"f": "v"}}).Result()
		require.NoError(t, err)
		ids = append(ids, id)
	}
	require.NoError(t, client.XGroupCreate(ctx, stream, "app.g", "0").Err())
	read, err := client.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "app.g", Consumer: "c", Streams: []string{stream, ">"}, Count: 2}).Result()
	require.NoError(t, err)
	require.NoError(t, client.XAck(ctx, stream, "app.g", read[0].Messages[0].ID).Err())
	// Deleting an entry after the group's last delivered ID makes Redis
	// report the group's lag as unknown; the entries are counted instead.
	require.NoError(t, client.XDel(ctx, stream, ids[3]).Err())

	lag, err := b.Lag(ctx, stream, "g")
	require.NoError(t, err)
	require.EqualValues(t, 1+3, lag, "one delivered and not acked, three not delivered (one deleted)")

	lag, err = b.Lag(ctx, stream, "other")
	require.NoError(t, err)
	require.EqualValues(t, 5, lag, "a group that does not exist lags by the stream's length")
}

func TestInspector_lagOfAGroupThatReadEverything(t *testing.T) {
	ctx := context.Background()
	client := newClient(t)
	b := newBackend(t, client, redisstream.Config{}, nil)
	stream := redistest.Name(t, "lag")
	require.NoError(t, client.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: map[string]any{"f": "v"}}).Err())
	require.NoError(t, client.XGroupCreate(ctx, stream, "g", "$").Err())

	lag, err := b.Lag(ctx, stream, "g")
	require.NoError(t, err)
	require.Zero(t, lag, "a group created at the end has nothing to consume")
}

func TestInspector_listTopicsTakesThePrefixLiterally(t *testing.T) {
	ctx := context.Background()
	client := newClient(t)
	b := newBackend(t, client, redisstream.Config{}, nil)
	base := redistest.Name(t, "glob")
	for _, name := range []string{base + "[1]*x", base + "11x", base + "[1]?y"} {
		require.NoError(t, client.XAdd(ctx, &redis.XAddArgs{Stream: name, Values: map[string]any{"f": "v"}}).Err())
	}
	require.NoError(t, client.Set(ctx, base+"[1]string", "not a stream", 0).Err())

	got, err := b.ListTopics(ctx, base+"[1]")
	require.NoError(t, err)
	require.Equal(t, []string{base + "[1]*x", base + "[1]?y"}, got, "glob characters in the prefix match themselves; keys that are not streams are left out")
}

func TestInspector_afterClose(t *testing.T) {
	client := newClient(t)
	b, err := redisstream.New(context.Background(), redisstream.Config{Client: client}, nil)
	require.NoError(t, err)
	require.NoError(t, b.Close())
	_, err = b.ListTopics(context.Background(), "")
	require.ErrorIs(t, err, redisstream.ErrClosed)
	_, err = b.Lag(context.Background(), "s", "g")
	require.ErrorIs(t, err, redisstream.ErrClosed)
}
