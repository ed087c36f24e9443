package redisstream

import (
	"errors"
	"fmt"
	"time"

	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/redis/go-redis/v9"
)

// Defaults of [Config].
const (
	// DefaultMaxIdleTime is the default of Config.MaxIdleTime, Watermill's
	// own default.
	DefaultMaxIdleTime = 60 * time.Second
	// DefaultClaimInterval is the default of Config.ClaimInterval,
	// Watermill's own default.
	DefaultClaimInterval = 5 * time.Second
	// DefaultNackResendSleep is the default of Config.NackResendSleep.
	DefaultNackResendSleep = time.Second
	// DefaultCloseTimeout is the default of Config.CloseTimeout, the same
	// as Watermill's router CloseTimeout.
	DefaultCloseTimeout = 30 * time.Second
)

// Config configures a [Backend].
type Config struct {
	// Client is the Redis client that every publisher and subscriber of the
	// backend uses: a *redis.Client, or a *redis.ClusterClient for a Redis
	// Cluster (see the package doc). The caller keeps owning it: the
	// backend never closes it, and the caller closes it after the backend
	// and every router using the backend are closed. Use [Open] to have
	// the backend own a client.
	//
	// Required.
	Client redis.UniversalClient

	// MaxLen trims the handlers' own streams and their tier streams to
	// about MaxLen entries (XADD MAXLEN ~, which trims whole macro nodes,
	// so a stream may hold somewhat more). Dead-letter streams are never
	// trimmed. Trimming drops the oldest entries whether or not a consumer
	// group has read them, so set it well above any backlog you expect: a
	// tier stream holds every failure of one tier delay, and a retry
	// trimmed away before it was read is lost.
	//
	// Optional. Defaults to 0: no trimming.
	MaxLen int64

	// ConsumerGroupPrefix is put before the consumer group name of every
	// subscription, so that two applications sharing a Redis and a topic
	// with handlers of the same name consume apart.
	//
	// Optional. Defaults to "" (groups are named after the handlers).
	ConsumerGroupPrefix string

	// MaxIdleTime is how long an entry may stay pending on a consumer that
	// stopped refreshing its claim before another consumer of the group
	// claims it and processes it again: it is how fast the entries of a
	// consumer that died (or lost Redis) are recovered, on a handler's own
	// stream and on every tier alike.
	//
	// A live consumer refreshes its claim on every entry it has in hand
	// (the one in its handler or held until due, and those it read ahead)
	// every MaxIdleTime/3, so a slow handler or a long tier delay never
	// makes an entry look abandoned. Keep it well above the longest pause
	// a live consumer may see talking to Redis (a GC pause, a network
	// blip, a failover): an entry whose claim lapses runs twice.
	//
	// Optional. Defaults to [DefaultMaxIdleTime] (60s).
	MaxIdleTime time.Duration

	// ClaimInterval is how often each subscription looks for entries to
	// claim (XPENDING with IDLE). An abandoned entry comes back after
	// MaxIdleTime and at most one ClaimInterval more.
	//
	// Optional. Defaults to [DefaultClaimInterval] (5s).
	ClaimInterval time.Duration

	// NackResendSleep is how long a Nacked message waits before it is
	// delivered again. The retry middleware Nacks only when it could not
	// publish to a tier or dead-letter stream, so Redis is in trouble and
	// an immediate redelivery would only spin.
	//
	// Optional. Defaults to [DefaultNackResendSleep] (1s).
	NackResendSleep time.Duration

	// CloseTimeout bounds how long closing a subscription waits for the
	// message the handler is working on, so that its Ack still reaches
	// Redis. A message acked later is delivered again after MaxIdleTime.
	//
	// Optional. Defaults to [DefaultCloseTimeout] (30s).
	CloseTimeout time.Duration
}

// setDefaults fills the optional fields.
func (c *Config) setDefaults() {
	if c.MaxIdleTime == 0 {
		c.MaxIdleTime = DefaultMaxIdleTime
	}
	if c.ClaimInterval == 0 {
		c.ClaimInterval = DefaultClaimInterval
	}
	if c.NackResendSleep == 0 {
		c.NackResendSleep = DefaultNackResendSleep
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
}

// Validate reports every problem with the config without changing it.
func (c Config) Validate() error {
	var errs []error
	if c.Client == nil {
		errs = append(errs, errors.New("Client is nil"))
	}
	if c.MaxLen < 0 {
		errs = append(errs, fmt.Errorf("MaxLen is %d, must not be negative (0 means no trimming)", c.MaxLen))
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{
		{"MaxIdleTime", c.MaxIdleTime},
		{"ClaimInterval", c.ClaimInterval},
		{"NackResendSleep", c.NackResendSleep},
		{"CloseTimeout", c.CloseTimeout},
	} {
		if d.d < 0 {
			errs = append(errs, fmt.Errorf("%s is %v, must not be negative (0 means the default)", d.name, d.d))
		}
	}
	return errors.Join(errs...)
}

// claimSettings are the settings that decide when a pending entry is taken
// from its consumer.
type claimSettings struct {
	// MaxIdleTime, ClaimInterval, CheckConsumersInterval and
	// ConsumerTimeout are watermill-redisstream's.
	MaxIdleTime            time.Duration
	ClaimInterval          time.Duration
	CheckConsumersInterval time.Duration
	ConsumerTimeout        time.Duration
	// RefreshInterval is how often a subscription refreshes its claim on
	// the entries it has in hand.
	RefreshInterval time.Duration
}

// claim returns the claim settings of a subscription to a stream whose
// entries wait delay (0 for a handler's own stream). c has its defaults set.
//
// An entry's idle time counts from its delivery to the consumer, or from
// the consumer's last refresh of its claim (XCLAIM ... JUSTID to itself,
// which resets it), on Redis's clock. The subscription refreshes every
// entry in hand each MaxIdleTime/3, so while the consumer lives no entry
// of it is ever idle for MaxIdleTime, however long the handler runs or the
// hold lasts, and the claim idle time needs no room for a tier's delay.
//
// Watermill removes consumers that were idle for ConsumerTimeout and have
// no pending entries, and with them any entry delivered between its look
// and the removal. The refresh and the reads keep a live consumer's idle
// time under a RefreshInterval; ConsumerTimeout stays far above (at least
// Watermill's 10 minutes), and above the delay too, for a server that would
// not count a refresh as activity.
func (c Config) claim(delay time.Duration) claimSettings {
	return claimSettings{
		MaxIdleTime:            c.MaxIdleTime,
		ClaimInterval:          c.ClaimInterval,
		CheckConsumersInterval: wmredis.DefaultCheckConsumersInterval,
		ConsumerTimeout:        max(wmredis.DefaultConsumerTimeout, 2*(c.MaxIdleTime+delay)),
		RefreshInterval:        max(c.MaxIdleTime/3, time.Millisecond),
	}
}
