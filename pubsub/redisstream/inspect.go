package redisstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/retry-kafka/retry-kafka/internal/streamid"
	"github.com/retry-kafka/retry-kafka/tiered"
)

var _ tiered.Inspector = (*Backend)(nil)

// scanCount is the COUNT hint of each SCAN step.
const scanCount = 1000

// ListTopics returns, sorted, the keys holding a stream whose names start
// with prefix ("" lists every stream). It walks the keyspace with SCAN
// (never KEYS), on every master of a Redis Cluster.
func (b *Backend) ListTopics(ctx context.Context, prefix string) ([]string, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	match := globEscape(prefix) + "*"
	var mu sync.Mutex
	seen := map[string]struct{}{}
	scan := func(ctx context.Context, c redis.Cmdable) error {
		var cursor uint64
		for {
			keys, next, err := c.ScanType(ctx, cursor, match, scanCount, "stream").Result()
			if err != nil {
				return fmt.Errorf("scan for streams %q: %w", match, err)
			}
			mu.Lock()
			for _, k := range keys {
				seen[k] = struct{}{} // SCAN may return a key twice
			}
			mu.Unlock()
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	var err error
	if cluster, ok := b.client.(*redis.ClusterClient); ok {
		err = cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
	} else {
		err = scan(ctx, b.client)
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(seen))
	for k := range seen {
		names = append(names, k)
	}
	slices.Sort(names)
	return names, nil
}

// globEscape escapes the characters that SCAN MATCH treats as a pattern.
func globEscape(s string) string {
	var sb strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

// Lag returns how many entries of the stream topic the consumer group
// ConsumerGroupPrefix+group has not consumed: those not yet delivered to the
// group plus those delivered and not acknowledged (pending). A group that
// does not exist lags by the stream's length; a stream that does not exist
// has lag 0.
//
// The undelivered count is Redis's own (XINFO GROUPS "lag", Redis 7); when
// Redis cannot tell it (Redis 6.2, or after entries were deleted from the
// middle of the stream) the entries after the group's last delivered ID
// are counted with XRANGE, a page at a time.
func (b *Backend) Lag(ctx context.Context, topic, group string) (int64, error) {
	if group == "" {
		return 0, errors.New("empty consumer group")
	}
	if err := b.checkOpen(); err != nil {
		return 0, err
	}
	group = b.config.ConsumerGroupPrefix + group
	groups, err := b.client.XInfoGroups(ctx, topic).Result()
	if err != nil {
		if isNoSuchKey(err) {
			return 0, nil
		}
		return 0, fmt.Errorf("groups of redis stream %s: %w", topic, err)
	}
	i := slices.IndexFunc(groups, func(g redis.XInfoGroup) bool { return g.Name == group })
	if i < 0 {
		n, err := b.client.XLen(ctx, topic).Result()
		if err != nil {
			return 0, fmt.Errorf("length of redis stream %s: %w", topic, err)
		}
		return n, nil
	}
	g := groups[i]
	undelivered, err := b.undelivered(ctx, topic, g)
	if err != nil {
		return 0, err
	}
	return undelivered + g.Pending, nil
}

// undelivered counts the entries of topic after g's last delivered ID.
func (b *Backend) undelivered(ctx context.Context, topic string, g redis.XInfoGroup) (int64, error) {
	if g.Lag > 0 {
		return g.Lag, nil
	}
	// Lag is 0 when everything was delivered, -1 when Redis cannot tell,
	// and absent (0) before Redis 7: look at the last entry to know which.
	last, err := b.client.XRevRangeN(ctx, topic, "+", "-", 1).Result()
	if err != nil {
		return 0, fmt.Errorf("last entry of redis stream %s: %w", topic, err)
	}
	if len(last) == 0 || streamid.Compare(last[0].ID, g.LastDeliveredID) <= 0 {
		return 0, nil
	}
	var n int64
	start := "(" + g.LastDeliveredID
	for {
		page, err := b.client.XRangeN(ctx, topic, start, "+", scanCount).Result()
		if err != nil {
			return 0, fmt.Errorf("count entries of redis stream %s: %w", topic, err)
		}
		n += int64(len(page))
		if len(page) < scanCount {
			return n, nil
		}
		start = "(" + page[len(page)-1].ID
	}
}

// checkOpen returns ErrClosed after Close.
func (b *Backend) checkOpen() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	return nil
}

func isNoSuchKey(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such key")
}

// Config returns the backend's config, with its defaults set, for tools
// that work on the same Redis, such as the dlq package. Its Client is the
// backend's client: do not close it.
func (b *Backend) Config() Config { return b.config }
