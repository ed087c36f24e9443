package redisstream_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// TestBackend_publishErrorsAreClassified publishes against a real
// redis-server of the test's own, set up for each case, and checks which
// errors are wrapped with tiered.ErrUnpublishable (publishing again cannot
// succeed) and which are left temporary.
func TestBackend_publishErrorsAreClassified(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 2<<20)
	for _, tc := range []struct {
		name string
		// setup prepares the server (admin is its default user) and
		// returns the options of the backend's client and the message
		// to publish to topic.
		setup         func(t *testing.T, admin *redis.Client, topic string) (*redis.Options, *message.Message)
		unpublishable bool
		wantText      []string
	}{
		{
			name: "key holds another type",
			setup: func(t *testing.T, admin *redis.Client, topic string) (*redis.Options, *message.Message) {
				require.NoError(t, admin.Set(context.Background(), topic, "not a stream", 0).Err())
				return admin.Options(), message.NewMessage("m1", nil)
			},
			unpublishable: true,
			wantText:      []string{"WRONGTYPE"},
		},
		{
			name: "ACL denies XADD",
			setup: func(t *testing.T, admin *redis.Client, _ string) (*redis.Options, *message.Message) {
				require.NoError(t, admin.Do(context.Background(), "ACL", "SETUSER", "noxadd", "on", ">pw", "~*", "&*", "+@all", "-xadd").Err())
				return as(admin, "noxadd"), message.NewMessage("m1", nil)
			},
			unpublishable: true,
			wantText:      []string{"NOPERM"},
		},
		{
			name: "ACL denies the key",
			setup: func(t *testing.T, admin *redis.Client, _ string) (*redis.Options, *message.Message) {
				require.NoError(t, admin.Do(context.Background(), "ACL", "SETUSER", "other", "on", ">pw", "~other:*", "&*", "+@all").Err())
				return as(admin, "other"), message.NewMessage("m1", nil)
			},
			unpublishable: true,
			wantText:      []string{"NOPERM"},
		},
		{
			name: "payload above proto-max-bulk-len",
			setup: func(t *testing.T, admin *redis.Client, _ string) (*redis.Options, *message.Message) {
				require.NoError(t, admin.ConfigSet(context.Background(), "proto-max-bulk-len", "1mb").Err())
				return admin.Options(), message.NewMessage("m1", []byte(big))
			},
			unpublishable: true,
			wantText:      []string{"m1", "too large", `field "payload" is 2097152 bytes`, "proto-max-bulk-len (1048576)"},
		},
		{
			name: "metadata above proto-max-bulk-len",
			setup: func(t *testing.T, admin *redis.Client, _ string) (*redis.Options, *message.Message) {
				require.NoError(t, admin.ConfigSet(context.Background(), "proto-max-bulk-len", "1mb").Err())
				m := message.NewMessage("m1", nil)
				m.Metadata.Set("error", big)
				return admin.Options(), m
			},
			unpublishable: true,
			wantText:      []string{`field "metadata"`, "proto-max-bulk-len"},
		},
		{
			name: "Watermill's reserved metadata key",
			setup: func(t *testing.T, admin *redis.Client, _ string) (*redis.Options, *message.Message) {
				m := message.NewMessage("m1", nil)
				m.Metadata.Set(wmredis.UUIDHeaderKey, "forged")
				return admin.Options(), m
			},
			unpublishable: true,
			wantText:      []string{"reserved", wmredis.UUIDHeaderKey},
		},
		{
			name: "maxmemory reached",
			setup: func(t *testing.T, admin *redis.Client, _ string) (*redis.Options, *message.Message) {
				ctx := context.Background()
				require.NoError(t, admin.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
				require.NoError(t, admin.ConfigSet(ctx, "maxmemory", "1").Err())
				return admin.Options(), message.NewMessage("m1", nil)
			},
			wantText: []string{"OOM"},
		},
		{
			name: "server became a read-only replica",
			setup: func(t *testing.T, admin *redis.Client, _ string) (*redis.Options, *message.Message) {
				require.NoError(t, admin.Do(context.Background(), "REPLICAOF", "127.0.0.1", strconv.Itoa(closedPort(t))).Err())
				return admin.Options(), message.NewMessage("m1", nil)
			},
			wantText: []string{"READONLY"},
		},
		{
			name: "large message, server down",
			setup: func(t *testing.T, admin *redis.Client, _ string) (*redis.Options, *message.Message) {
				opts := admin.Options()
				opts.MaxRetries = -1
				return opts, message.NewMessage("m1", []byte(big))
			},
			// EOF or connection refused: temporary, though large.
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			admin := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
			defer admin.Close()
			topic := "orders"
			opts, msg := tc.setup(t, admin, topic)
			client := redis.NewClient(opts)
			defer client.Close()
			b, err := redisstream.New(context.Background(), redisstream.Config{Client: client}, nil)
			require.NoError(t, err)
			defer b.Close()
			if tc.name == "large message, server down" {
				_ = admin.Shutdown(context.Background()).Err() // answers with the connection closing
			}

			err = b.Publisher().Publish(topic, msg)
			require.Error(t, err)
			require.Equal(t, tc.unpublishable, errors.Is(err, tiered.ErrUnpublishable), "unpublishable: %v", err)
			for _, want := range tc.wantText {
				require.ErrorContains(t, err, want)
			}
			require.ErrorContains(t, err, topic, "the error names the stream")
		})
	}
}

// TestBackend_publishWorksBelowTheLimits: the same server settings that
// make some messages unpublishable let others through.
func TestBackend_publishWorksBelowTheLimits(t *testing.T) {
	t.Parallel()
	admin := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	defer admin.Close()
	ctx := context.Background()
	require.NoError(t, admin.ConfigSet(ctx, "proto-max-bulk-len", "1mb").Err())
	require.NoError(t, admin.Do(ctx, "ACL", "SETUSER", "other", "on", ">pw", "~other:*", "&*", "+@all").Err())
	client := redis.NewClient(as(admin, "other"))
	defer client.Close()
	b, err := redisstream.New(ctx, redisstream.Config{Client: client}, nil)
	require.NoError(t, err)
	defer b.Close()

	require.NoError(t, b.Publisher().Publish("other:orders", message.NewMessage("m1", []byte(strings.Repeat("x", 900<<10)))))
	require.EqualValues(t, 1, admin.XLen(ctx, "other:orders").Val())
}

// as returns admin's options for another user, password "pw".
func as(admin *redis.Client, user string) *redis.Options {
	opts := admin.Options()
	opts.Username, opts.Password = user, "pw"
	return opts
}

// closedPort returns a port on 127.0.0.1 that nothing listens on.
func closedPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}
