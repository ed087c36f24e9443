package kafka

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"

	"github.com/retry-kafka/retry-kafka/internal/backendurl"
)

// Config configures a [Backend].
type Config struct {
	// Brokers are the bootstrap addresses, host:port.
	//
	// Required.
	Brokers []string

	// Sarama is the base client config; the backend copies it for each
	// client and then sets what correctness needs (see
	// [DefaultSaramaConfig] for the list).
	//
	// Optional. Defaults to [DefaultSaramaConfig].
	Sarama *sarama.Config

	// ConsumerGroupPrefix is put before every consumer group name.
	//
	// Optional. Defaults to "".
	ConsumerGroupPrefix string

	// CreateTopics allows [Backend.Prepare] to create a missing main topic
	// (with MainTopicPartitions partitions). Tier and dead-letter topics
	// are always created when missing.
	//
	// Optional. Defaults to false: a missing main topic is an error.
	CreateTopics bool

	// MainTopicPartitions is the partition count of a main topic that
	// Prepare creates.
	//
	// Optional. Defaults to 1.
	MainTopicPartitions int32

	// ReplicationFactor of the topics Prepare creates. Tier and
	// dead-letter topics are created with min.insync.replicas set from
	// it (see [Backend.Prepare]).
	//
	// Optional. Defaults to -1, the broker's default.replication.factor.
	ReplicationFactor int16

	// PartitionKey gives the record key of messages that carry no
	// original key (tiered.KeyKafkaKey), such as those the application
	// publishes itself. Tier and dead-letter copies always keep the
	// original record's key.
	//
	// Optional. Defaults to no key.
	PartitionKey wkafka.GeneratePartitionKey

	// Unmarshaler turns a main topic's records into messages, like
	// watermill-kafka's SubscriberConfig.Unmarshaler. A record it cannot
	// unmarshal is sent to the handler's dead-letter topic, raw, with the
	// reason (a record this library wrote, read back from a dead-letter
	// topic, is read with the DefaultMarshaler instead). A message it returns without a UUID gets one derived from
	// where the record was first consumed (tiered.OriginUUID("kafka",
	// topic, partition, offset)), kept on every hop. Tier and dead-letter
	// topics, which this library writes, are always read with
	// watermill-kafka's DefaultMarshaler.
	//
	// Optional. Defaults to watermill-kafka's DefaultMarshaler.
	Unmarshaler wkafka.Unmarshaler

	// PartitionWindow bounds, per partition, how far a consumer reads
	// ahead of its oldest unresolved record: a record is resolved when
	// the handler is done with it and, if it failed, its tier or
	// dead-letter copy is broker-confirmed. Offsets are committed up to
	// the oldest unresolved record, so after a crash at most about
	// PartitionWindow records (plus those resolved since the last commit)
	// are handled again, and at most PartitionWindow copies per partition
	// are held in memory until confirmed. Copies are produced while the
	// partition moves on; a full window waits for them. The window must
	// cover the main topic's rate times a copy's confirmation time: 256
	// was too small on a real broker at 100,000 messages a second, 1024
	// was not (BENCHMARKS.md, figure 9). Lower it for large messages, or
	// to bound duplicates more tightly.
	//
	// Optional. Defaults to 1024.
	PartitionWindow int

	// DrainTimeout bounds how long a consumer whose session or
	// subscription ends (Close, the subscription's context, a rebalance
	// that takes its partitions) waits for the messages it handed on to
	// be acked and their copies confirmed before it commits and lets
	// them go. Messages still unresolved then have their context
	// cancelled and are delivered again, to whoever owns the partition
	// next. Keep it below Sarama's Consumer.Group.Rebalance.Timeout.
	//
	// Optional. Defaults to 10s.
	DrainTimeout time.Duration

	// NackResendSleep is the pause before a Nacked message is delivered
	// again.
	//
	// Optional. Defaults to 500ms.
	NackResendSleep time.Duration
}

// DefaultPartitionWindow is the default of [Config.PartitionWindow].
const DefaultPartitionWindow = 1024

const defaultDrainTimeout = 10 * time.Second

func (c *Config) setDefaults() {
	if c.Sarama == nil {
		c.Sarama = DefaultSaramaConfig()
	}
	if c.MainTopicPartitions == 0 {
		c.MainTopicPartitions = 1
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = -1
	}
	if c.Unmarshaler == nil {
		c.Unmarshaler = wkafka.DefaultMarshaler{}
	}
	if c.PartitionWindow == 0 {
		c.PartitionWindow = DefaultPartitionWindow
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = defaultDrainTimeout
	}
	if c.NackResendSleep == 0 {
		c.NackResendSleep = 500 * time.Millisecond
	}
}

// Validate reports every problem with the config without changing it.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("Brokers is empty"))
	}
	for i, b := range c.Brokers {
		switch {
		case strings.TrimSpace(b) == "":
			errs = append(errs, fmt.Errorf("Brokers[%d] is empty", i))
		case b == embeddedHost:
			errs = append(errs, errEmbedded)
		}
	}
	if c.MainTopicPartitions < 0 {
		errs = append(errs, fmt.Errorf("MainTopicPartitions is %d, must be positive", c.MainTopicPartitions))
	}
	if c.ReplicationFactor < -1 {
		errs = append(errs, fmt.Errorf("ReplicationFactor is %d, must be positive or -1", c.ReplicationFactor))
	}
	if c.PartitionWindow < 0 {
		errs = append(errs, fmt.Errorf("PartitionWindow is %d, must be positive", c.PartitionWindow))
	}
	if c.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("DrainTimeout is %v, must not be negative", c.DrainTimeout))
	}
	if c.NackResendSleep < 0 {
		errs = append(errs, fmt.Errorf("NackResendSleep is %v, must not be negative", c.NackResendSleep))
	}
	if c.Sarama != nil {
		if err := c.Sarama.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("Sarama: %w", err))
		}
	}
	drain, rebalance := c.DrainTimeout, DefaultSaramaConfig().Consumer.Group.Rebalance.Timeout
	if drain == 0 {
		drain = defaultDrainTimeout
	}
	if c.Sarama != nil {
		rebalance = c.Sarama.Consumer.Group.Rebalance.Timeout
	}
	if drain >= rebalance {
		errs = append(errs, fmt.Errorf("DrainTimeout (%v) must be below Sarama's Consumer.Group.Rebalance.Timeout (%v): a consumer draining its partitions in a rebalance would be dropped from its group", drain, rebalance))
	}
	return errors.Join(errs...)
}

// DefaultSaramaConfig is the Sarama config the backend starts from: a
// protocol version every Kafka from 3.0 on speaks, a 1 s heartbeat and
// 10 s session so a rebalance is noticed quickly, a 250 ms fetch wait, and
// offsets committed every 200 ms (Sarama: 1 s), which bounds what a killed
// consumer leaves to be handled again.
//
// Whatever the base config, the backend then sets what correctness needs:
// consumer groups start at the oldest offset and return their errors; the
// producer is idempotent (so its own retries never write a record twice),
// waits for every in-sync replica (acks=all), retries at least 10 times and
// returns successes and errors; Net.MaxOpenRequests is 1 on the producer's
// client, as the idempotent producer requires. Offsets are committed by
// the backend itself, every Consumer.Offsets.AutoCommit.Interval and when a
// session ends, whether AutoCommit.Enable is on or off (with it off, the
// backend calls Commit itself).
func DefaultSaramaConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.Version = sarama.V3_0_0_0
	c.ClientID = "retry-kafka"
	c.Consumer.Group.Heartbeat.Interval = time.Second
	c.Consumer.Group.Session.Timeout = 10 * time.Second
	c.Consumer.MaxWaitTime = 250 * time.Millisecond
	c.Consumer.Return.Errors = true
	c.Metadata.Retry.Backoff = 250 * time.Millisecond
	// Offsets are marked and committed five times a second rather than
	// Sarama's once: a consumer killed without warning leaves at most a
	// few hundred milliseconds of handled records to be handled again,
	// for a few OffsetCommit requests per second per group.
	c.Consumer.Offsets.AutoCommit.Interval = 200 * time.Millisecond
	return c
}

// consumerConfig copies the base config for a consumer group's client.
func (c Config) consumerConfig() *sarama.Config {
	s := *c.Sarama
	s.Consumer.Offsets.Initial = sarama.OffsetOldest
	s.Consumer.Return.Errors = true
	return &s
}

// producerConfig copies the base config for the producer's client (which
// the admin shares).
func (c Config) producerConfig() *sarama.Config {
	s := *c.Sarama
	s.Producer.Return.Successes = true
	s.Producer.Return.Errors = true
	s.Producer.RequiredAcks = sarama.WaitForAll
	s.Producer.Idempotent = true
	s.Net.MaxOpenRequests = 1
	if s.Producer.Retry.Max < 10 {
		s.Producer.Retry.Max = 10
	}
	if !s.Version.IsAtLeast(sarama.V0_11_0_0) {
		s.Version = sarama.V0_11_0_0
	}
	return &s
}

// saramaConfig is a config for tools that talk to the same cluster (see
// [Backend.SaramaConfig]): the producer's, with new groups starting at the
// oldest offset.
func (c Config) saramaConfig() *sarama.Config {
	s := c.producerConfig()
	s.Consumer.Offsets.Initial = sarama.OffsetOldest
	s.Consumer.Return.Errors = true
	return s
}

// embeddedHost is the host of kafka://embedded, which package
// pubsub/embedded serves.
const embeddedHost = "embedded"

// EmbeddedURL names the in-process broker that package
// github.com/retry-kafka/retry-kafka/pubsub/embedded starts. This package
// does not serve it (so that it never links a fake broker); [Open] and
// [New] refuse it with [errEmbedded]'s explanation.
const EmbeddedURL = "kafka://" + embeddedHost

var errEmbedded = errors.New(`"embedded" is not a broker address: kafka://embedded is served by package github.com/retry-kafka/retry-kafka/pubsub/embedded (embedded.Open), which links an in-process broker; this package does not`)

// urlParams are the parameters [ParseURL] knows, in the order its errors
// list them.
var urlParams = []string{"group_prefix", "create_topics", "partitions", "replication_factor"}

// ParseURL reads a Config from a URL:
//
//	kafka://host:9092,host2:9092?group_prefix=app.&create_topics=true&partitions=3&replication_factor=3
//
// Each parameter may be given once; an unknown or repeated parameter, a
// user, a path or an unparseable URL is an error that names the problem.
// "kafka://embedded" parses to the broker "embedded", which only package
// pubsub/embedded serves.
func ParseURL(rawURL string) (Config, error) {
	if !strings.HasPrefix(rawURL, "kafka://") {
		return Config{}, backendurl.Error("kafka", rawURL, "must start with kafka://")
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) { // do not echo the URL, password and all
			err = ue.Err
		}
		return Config{}, backendurl.Error("kafka", rawURL, "cannot be parsed: %v", err)
	}
	switch {
	case u.User != nil:
		return Config{}, backendurl.Error("kafka", rawURL, "a user is not supported in the URL; set Config.Sarama.Net.SASL")
	case u.Path != "" && u.Path != "/":
		return Config{}, backendurl.Error("kafka", rawURL, "unexpected path %q (topics are not part of the URL)", u.Path)
	case u.Fragment != "":
		return Config{}, backendurl.Error("kafka", rawURL, "unexpected fragment %q", u.Fragment)
	}
	var c Config
	for h := range strings.SplitSeq(u.Host, ",") {
		if h = strings.TrimSpace(h); h != "" {
			c.Brokers = append(c.Brokers, h)
		}
	}
	if len(c.Brokers) == 0 {
		return Config{}, backendurl.Error("kafka", rawURL, "names no broker: use kafka://host:9092")
	}
	params, err := backendurl.Params("kafka", rawURL, u.RawQuery, urlParams)
	if err != nil {
		return Config{}, err
	}
	for _, k := range urlParams {
		v, ok := params[k]
		if !ok {
			continue
		}
		switch k {
		case "group_prefix":
			c.ConsumerGroupPrefix = v
		case "create_topics":
			if c.CreateTopics, err = strconv.ParseBool(v); err != nil {
				return Config{}, backendurl.Error("kafka", rawURL, "create_topics=%q is not a boolean", v)
			}
		case "partitions":
			n, err := strconv.ParseInt(v, 10, 32)
			if err != nil || n < 1 {
				return Config{}, backendurl.Error("kafka", rawURL, "partitions=%q is not a positive integer", v)
			}
			c.MainTopicPartitions = int32(n)
		case "replication_factor":
			n, err := strconv.ParseInt(v, 10, 16)
			if err != nil || n < -1 || n == 0 {
				return Config{}, backendurl.Error("kafka", rawURL, "replication_factor=%q is not a positive integer or -1", v)
			}
			c.ReplicationFactor = int16(n)
		}
	}
	return c, nil
}
