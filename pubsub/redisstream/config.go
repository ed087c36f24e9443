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

	// MaxIdleTime is how long an entry of a handler's own stream may stay
	// read but unacknowledged on one consumer before another consumer of
	// the group claims it and processes it again. It is how fast the
	// entries of a consumer that died are recovered, and it must exceed
	// the time a handler takes on three messages (a consumer reads up to
	// two entries ahead of the one in the handler), or a slow message runs
	// twice.
	//
	// On a tier stream the tier's delay is added, because an entry stays
	// pending while the holding subscriber waits for its due time: a tier
	// with delay d claims entries idle for d + MaxIdleTime.
	//
	// Optional. Defaults to [DefaultMaxIdleTime] (60s).
	MaxIdleTime time.Duration

	// ClaimInterval is how often each subscription looks for entries to
	// claim (XPENDING with IDLE). An abandoned entry comes back after
	// MaxIdleTime (plus the tier delay) and at most one ClaimInterval.
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

// claimSettings are the watermill-redisstream settings that decide when a
// pending entry is taken from its consumer.
type claimSettings struct {
	MaxIdleTime            time.Duration
	ClaimInterval          time.Duration
	CheckConsumersInterval time.Duration
	ConsumerTimeout        time.Duration
}

// claim returns the claim settings of a subscription to a stream whose
// entries wait delay (0 for a handler's own stream). c has its defaults set.
//
// An entry's idle time counts from its delivery to the consumer (Redis's
// clock) until its Ack. On a tier it is at most: the wait behind the
// entries read before it, plus the hold (at most the tier's delay: the due
// time is at most the publish time plus the delay, and the holding
// subscriber never holds longer than the delay), plus the handler's run.
// MaxIdleTime already budgets the wait and the run on the handler's own
// stream, so a tier needs exactly the delay on top; nothing the consumer
// does while alive makes an entry idle longer.
//
// Watermill removes consumers that were idle for ConsumerTimeout and have
// no pending entries. A consumer blocked in a hold does not read, so its
// idle time grows to the delay; keeping ConsumerTimeout at twice the claim
// idle time (and at least Watermill's 10 minutes) keeps a live consumer
// that just acked its held entry from being removed just as it reads the
// next one, which would strand that entry.
func (c Config) claim(delay time.Duration) claimSettings {
	idle := c.MaxIdleTime
	if delay > 0 {
		idle += delay
	}
	return claimSettings{
		MaxIdleTime:            idle,
		ClaimInterval:          c.ClaimInterval,
		CheckConsumersInterval: wmredis.DefaultCheckConsumersInterval,
		ConsumerTimeout:        max(wmredis.DefaultConsumerTimeout, 2*idle),
	}
}
