package redisstream

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/redis/go-redis/v9"

	"github.com/retry-kafka/retry-kafka/internal/backendurl"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// Backend is the Redis Streams backend, a [tiered.Backend]. Build it with
// [New] or [Open].
type Backend struct {
	config         Config
	client         redis.UniversalClient
	ownsClient     bool
	logger         watermill.LoggerAdapter
	consumerPrefix string

	// trimmed publishes with MAXLEN ~ Config.MaxLen (nil without MaxLen),
	// untrimmed without.
	trimmed, untrimmed *wmredis.Publisher

	mu     sync.Mutex
	closed bool
	dlqs   map[string]struct{}
	subs   map[*subscriber]struct{}

	// On a Redis Cluster, refreshTopology runs until stopRefresh is
	// closed, then closes refreshDone (both nil on other clients).
	stopRefresh, refreshDone chan struct{}
}

var _ tiered.Backend = (*Backend)(nil)

// New checks config, checks that the server is Redis 6.2 or later, and
// returns a backend on config.Client, which it never closes.
func New(ctx context.Context, config Config, logger watermill.LoggerAdapter) (*Backend, error) {
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	config.setDefaults()
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	version, err := serverVersion(ctx, config.Client)
	if err != nil {
		return nil, err
	}
	if err := checkVersion(version); err != nil {
		return nil, err
	}

	b := &Backend{
		config:         config,
		client:         config.Client,
		logger:         logger,
		consumerPrefix: consumerPrefix(),
		dlqs:           map[string]struct{}{},
		subs:           map[*subscriber]struct{}{},
	}
	if b.untrimmed, err = wmredis.NewPublisher(wmredis.PublisherConfig{Client: streamClient{UniversalClient: b.client}}, logger); err != nil {
		return nil, err
	}
	if config.MaxLen > 0 {
		b.trimmed, err = wmredis.NewPublisher(wmredis.PublisherConfig{Client: streamClient{UniversalClient: b.client}, DefaultMaxlen: config.MaxLen}, logger)
		if err != nil {
			return nil, err
		}
	}
	if cluster, ok := config.Client.(*redis.ClusterClient); ok {
		b.stopRefresh, b.refreshDone = make(chan struct{}), make(chan struct{})
		go refreshTopology(cluster, b.stopRefresh, b.refreshDone)
	}
	logger.Debug("Redis stream backend ready", watermill.LogFields{"redis_version": version, "max_len": config.MaxLen})
	return b, nil
}

// Open connects to the Redis server that rawURL names and returns a
// backend that owns the client: [Backend.Close] closes it.
//
// The URL is what redis.ParseURL of go-redis accepts
// ("redis://[user:password@]host:6379/0", "rediss://..." for TLS,
// "unix:///path/to/redis.sock?db=0"), with go-redis's client parameters
// (db, protocol, client_name, max_retries, min_retry_backoff,
// max_retry_backoff, dial_timeout, read_timeout, write_timeout, pool_fifo,
// pool_size, pool_timeout, max_concurrent_dials, min_idle_conns,
// max_idle_conns, max_active_conns, conn_max_idle_time, conn_max_lifetime,
// conn_max_lifetime_jitter, skip_verify), plus these parameters of the
// backend's [Config]:
//
//	max_len=100000             Config.MaxLen
//	consumer_group_prefix=app. Config.ConsumerGroupPrefix
//	max_idle_time=30s          Config.MaxIdleTime
//	claim_interval=1s          Config.ClaimInterval
//
// A URL that does not parse, an unknown parameter and a parameter given
// twice are errors that name the problem; no error shows the password.
func Open(ctx context.Context, rawURL string, logger watermill.LoggerAdapter) (*Backend, error) {
	config, redisURL, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return nil, backendurl.Error("redis", rawURL, "%v", withoutURL(err))
	}
	client := redis.NewClient(opts)
	config.Client = client
	b, err := New(ctx, config, logger)
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("redis at %s: %w", opts.Addr, err)
	}
	b.ownsClient = true
	return b, nil
}

// urlParams returns the names of the URL parameters of [Open] that set the
// backend's [Config].
func urlParams() []string {
	return []string{"max_len", "consumer_group_prefix", "max_idle_time", "claim_interval"}
}

// clientURLParams returns the names of the URL parameters of [Open] that
// go-redis reads into the client's options (redis.ParseURL). Deprecated
// and internal-tuning parameters of go-redis are not taken: set them with
// [New] and a client of your own.
func clientURLParams() []string {
	return []string{
		"db", "protocol", "client_name",
		"max_retries", "min_retry_backoff", "max_retry_backoff",
		"dial_timeout", "read_timeout", "write_timeout",
		"pool_fifo", "pool_size", "pool_timeout", "max_concurrent_dials",
		"min_idle_conns", "max_idle_conns", "max_active_conns",
		"conn_max_idle_time", "conn_max_lifetime", "conn_max_lifetime_jitter",
		"skip_verify",
	}
}

// parseURL takes the backend's own parameters out of rawURL's query, and
// returns them with the URL left for go-redis.
func parseURL(rawURL string) (Config, string, error) {
	var config Config
	u, err := url.Parse(rawURL)
	if err != nil {
		return config, "", backendurl.Error("redis", rawURL, "%v", withoutURL(err))
	}
	params, err := backendurl.Params("redis", rawURL, u.RawQuery, append(urlParams(), clientURLParams()...))
	if err != nil {
		return config, "", err
	}
	var errs []error
	duration := func(key string, dst *time.Duration) {
		if v, ok := params[key]; ok {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				errs = append(errs, fmt.Errorf("%s=%q is not a positive duration", key, v))
			}
			*dst = d
		}
	}
	if v, ok := params["max_len"]; ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("max_len=%q is not a non-negative integer", v))
		}
		config.MaxLen = n
	}
	if v, ok := params["consumer_group_prefix"]; ok {
		config.ConsumerGroupPrefix = v
	}
	duration("max_idle_time", &config.MaxIdleTime)
	duration("claim_interval", &config.ClaimInterval)
	if err := errors.Join(errs...); err != nil {
		return config, "", backendurl.Error("redis", rawURL, "%v", err)
	}
	rest := url.Values{}
	for k, v := range params {
		if !slices.Contains(urlParams(), k) {
			rest.Set(k, v)
		}
	}
	u.RawQuery = rest.Encode()
	return config, u.String(), nil
}

// withoutURL drops the URL that a *url.Error quotes, password and all.
func withoutURL(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

// consumerPrefix starts every consumer name with the host and process, so
// that XINFO CONSUMERS tells where a consumer runs.
func consumerPrefix() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return fmt.Sprintf("%s-%d-", host, os.Getpid())
}

// Publisher returns the backend's publisher. Publish returns once Redis
// stored every message (XADD), in order; it stops at the first failure.
// Its Close does nothing: close the backend.
//
// An error that publishing the message again cannot mend wraps
// [tiered.ErrUnpublishable] (WRONGTYPE, NOPERM, too large for the server's
// proto-max-bulk-len, ...); OOM, LOADING, READONLY, CLUSTERDOWN, MOVED and
// ASK, authentication and network errors are temporary: they are not about
// the message, and every message fails alike until they pass.
//
// Messages are trimmed with MAXLEN ~ Config.MaxLen, except on the
// dead-letter topics named to [Backend.Prepare] and for messages that carry
// Watermill's poison reason (middleware.ReasonForPoisonedKey), which are
// dead-letter copies wherever they go.
func (b *Backend) Publisher() message.Publisher { return publisher{b} }

// publisher is the shared publisher; its Close leaves it open.
type publisher struct{ b *Backend }

func (p publisher) Publish(topic string, msgs ...*message.Message) error {
	for _, msg := range msgs {
		if err := p.b.publish(topic, msg, p.b.trim(topic, msg)); err != nil {
			return err
		}
	}
	return nil
}

func (publisher) Close() error { return nil }

// trim reports whether msg is trimmed when published to topic.
func (b *Backend) trim(topic string, msg *message.Message) bool {
	if b.trimmed == nil {
		return false
	}
	if _, poisoned := msg.Metadata[wmiddleware.ReasonForPoisonedKey]; poisoned {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	_, dlq := b.dlqs[topic]
	return !dlq
}

// publish adds msg to the stream topic.
func (b *Backend) publish(topic string, msg *message.Message, trim bool) error {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if msg.Metadata.Get(wmredis.UUIDHeaderKey) != "" {
		return fmt.Errorf("%w: redis stream %s: message %s: metadata key %s is reserved for Watermill's message UUID",
			tiered.ErrUnpublishable, topic, msg.UUID, wmredis.UUIDHeaderKey)
	}
	pub := b.untrimmed
	if trim {
		pub = b.trimmed
	}
	if err := pub.Publish(topic, msg); err != nil {
		return b.publishError(topic, msg, err)
	}
	return nil
}

// Subscriber returns a subscriber that consumes in the consumer group
// ConsumerGroupPrefix+params.Group, under a consumer name of its own
// ("{host}-{pid}-{random}"). A new group reads its stream from the first
// entry.
//
// The consumer refreshes its claim on every entry it has in hand (in the
// handler, held until due, or read ahead) every Config.MaxIdleTime/3, so no
// other consumer takes them while it lives; entries pending on a consumer
// that stopped are claimed by the others after Config.MaxIdleTime, on every
// stream, tiers included. An entry that is not a Watermill message goes to
// params.DLQ with the reason (or is logged and dropped when params.DLQ is
// empty); the subscription goes on. An entry in Watermill's field layout
// without a UUID gets tiered.OriginUUID("redis", stream, entry ID).
//
// Every message's context carries a [tiered.Delivery]: the entry ID's time
// and the entry's coordinates ([tiered.KeyRedisStream],
// [tiered.KeyRedisEntryID]). The context ends when the message is acked (as
// on every Watermill pub/sub), but not when the subscription's context
// does: closing lets the message in flight finish for at most
// Config.CloseTimeout and acks it in Redis.
func (b *Backend) Subscriber(params tiered.SubscribeParams) (message.Subscriber, error) {
	var errs []error
	if params.Group == "" {
		errs = append(errs, errors.New("Group is empty"))
	}
	if params.Delay < 0 {
		errs = append(errs, fmt.Errorf("Delay is %v, must not be negative", params.Delay))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("invalid subscribe params: %w", err)
	}
	s, err := b.newSubscriber(params)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		s.cancel()
		return nil, ErrClosed
	}
	b.subs[s] = struct{}{}
	return s, nil
}

// forget drops a closed subscriber.
func (b *Backend) forget(s *subscriber) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.subs, s)
}

// Prepare remembers topics.DLQ as a dead-letter stream, never trimmed, and
// checks that every key of the handler is a stream or does not exist yet.
// Streams and consumer groups are created on first use, so there is
// nothing else to create. It is idempotent.
func (b *Backend) Prepare(ctx context.Context, topics tiered.Topics) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	if topics.DLQ != "" {
		b.dlqs[topics.DLQ] = struct{}{}
	}
	b.mu.Unlock()

	names := append([]string{topics.Main}, topics.Tiers...)
	names = append(names, topics.DLQ)
	var errs []error
	for _, name := range names {
		if name == "" {
			continue
		}
		typ, err := b.client.Type(ctx, name).Result()
		if err != nil {
			return fmt.Errorf("check redis key %s: %w", name, err)
		}
		if typ != "none" && typ != "stream" {
			errs = append(errs, fmt.Errorf("redis key %s holds a %s, not a stream", name, typ))
		}
	}
	return errors.Join(errs...)
}

// Close closes the subscribers made by [Backend.Subscriber] that are still
// open, and the client if [Open] made it; a client passed in [Config] stays
// open. It is safe to call more than once.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := make([]*subscriber, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()

	var errs []error
	for _, s := range subs {
		errs = append(errs, s.Close())
	}
	if b.stopRefresh != nil {
		close(b.stopRefresh)
		<-b.refreshDone
	}
	if b.ownsClient {
		errs = append(errs, b.client.Close())
	}
	return errors.Join(errs...)
}
