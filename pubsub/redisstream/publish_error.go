package redisstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// Limits of a Redis server on the size of a request, their defaults (used
// when CONFIG GET is not allowed) and the least a server can be set to.
const (
	// defaultMaxBulk is proto-max-bulk-len's default: the largest field
	// (payload, metadata) an XADD may carry.
	defaultMaxBulk = 512 << 20
	// minMaxBulk is the least proto-max-bulk-len can be set to: fields
	// below it always fit.
	minMaxBulk = 1 << 20
	// defaultMaxQuery is client-query-buffer-limit's default: the largest
	// whole request.
	defaultMaxQuery = 1 << 30
	// limitsTimeout bounds the CONFIG GET that reads them.
	limitsTimeout = 2 * time.Second
)

// publishError wraps the error of publishing msg to topic, with
// [tiered.ErrUnpublishable] when publishing it again cannot succeed, so
// that the retry middleware dead-letters a copy that fits instead:
//
//   - WRONGTYPE: the key holds something other than a stream;
//   - NOPERM: an ACL denies XADD, or the key, to the client's user;
//   - the stream's last ID is the largest possible one;
//   - a field of the message is larger than the server's
//     proto-max-bulk-len, or the whole request than its
//     client-query-buffer-limit. The server then answers with a protocol
//     error and drops the connection, which the client mostly reports as
//     a network error, so the message's size is checked against the
//     server's limits (CONFIG GET, else their defaults) on either.
//
// Everything else is temporary, because it is not about this message or
// topic and passes (or needs an operator) while other messages would fail
// the same way: OOM (maxmemory reached; consumers acking and trimming free
// memory), LOADING, READONLY and MASTERDOWN (a failover), CLUSTERDOWN,
// TRYAGAIN, MOVED and ASK (slots moving; a ClusterClient follows them, a
// plain client on a cluster is a misconfiguration that fails every
// publish), BUSY, MISCONF, NOREPLICAS, authentication failures (NOAUTH,
// WRONGPASS: every command fails until the credentials are fixed),
// timeouts, refused connections and a closed client.
func (b *Backend) publishError(topic string, msg *message.Message, err error) error {
	err = fmt.Errorf("redis stream %s: %w", topic, err)
	switch {
	case redis.HasErrorPrefix(err, "WRONGTYPE"),
		redis.IsPermissionError(err),
		redis.HasErrorPrefix(err, "ERR The stream has exhausted the last possible ID"):
		return fmt.Errorf("%w: %w", tiered.ErrUnpublishable, err)
	}
	// A request over the limits makes the server answer "ERR Protocol
	// error: invalid bulk length" and drop the connection, often before
	// the client read the answer.
	var reply redis.Error
	if errors.As(err, &reply) && !redis.HasErrorPrefix(err, "Protocol error") ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed) {
		return err
	}
	if tooLarge := b.tooLarge(msg); tooLarge != "" {
		return fmt.Errorf("%w: redis stream %s: message %s %s (%w)", tiered.ErrUnpublishable, topic, msg.UUID, tooLarge, err)
	}
	return err
}

// tooLarge says how msg exceeds the server's request limits, or returns ""
// when it does not (or its size cannot be known).
func (b *Backend) tooLarge(msg *message.Message) string {
	values, err := wmredis.DefaultMarshallerUnmarshaller{}.Marshal("", msg)
	if err != nil {
		return ""
	}
	var largest, total int
	var field string
	for k, v := range values {
		n := valueLen(v)
		total += len(k) + n
		if n > largest {
			largest, field = n, k
		}
	}
	if largest < minMaxBulk && total < minMaxBulk {
		return "" // fits any server
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(msg.Context()), limitsTimeout)
	defer cancel()
	maxBulk := b.configInt(ctx, "proto-max-bulk-len", defaultMaxBulk)
	maxQuery := b.configInt(ctx, "client-query-buffer-limit", defaultMaxQuery)
	switch {
	case int64(largest) > maxBulk:
		return fmt.Sprintf("is too large for the server: its field %q is %d bytes, above proto-max-bulk-len (%d)", field, largest, maxBulk)
	case int64(total) > maxQuery:
		return fmt.Sprintf("is too large for the server: it is %d bytes, above client-query-buffer-limit (%d)", total, maxQuery)
	}
	return ""
}

// configInt reads a numeric server setting, or returns def when the server
// does not tell (CONFIG not allowed, or renamed, as on managed services).
func (b *Backend) configInt(ctx context.Context, name string, def int64) int64 {
	vals, err := b.client.ConfigGet(ctx, name).Result()
	if err != nil {
		return def
	}
	n, err := strconv.ParseInt(vals[name], 10, 64)
	if err != nil || n <= 0 {
		return def
	}
	return n
}

func valueLen(v any) int {
	switch v := v.(type) {
	case []byte:
		return len(v)
	case string:
		return len(v)
	}
	return 0
}
