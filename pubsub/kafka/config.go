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
)

// Config configures a [Backend].
type Config struct {
	// Brokers are the bootstrap addresses, host:port.
	//
	// Required.
	Brokers []string

	// Sarama is the base client config; the backend copies it for each
	// client and then sets what correctness needs: consumer groups start
	// at the oldest offset, the producer waits for all in-sync replicas
	// and returns successes.
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

	// ReplicationFactor of the topics Prepare creates.
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

	// NackResendSleep is the pause before a Nacked message is delivered
	// again (a failed tier publish, say).
	//
	// Optional. Defaults to 500ms.
	NackResendSleep time.Duration
}

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
		if strings.TrimSpace(b) == "" {
			errs = append(errs, fmt.Errorf("Brokers[%d] is empty", i))
		}
	}
	if c.MainTopicPartitions < 0 {
		errs = append(errs, fmt.Errorf("MainTopicPartitions is %d, must be positive", c.MainTopicPartitions))
	}
	if c.ReplicationFactor < -1 {
		errs = append(errs, fmt.Errorf("ReplicationFactor is %d, must be positive or -1", c.ReplicationFactor))
	}
	if c.NackResendSleep < 0 {
		errs = append(errs, fmt.Errorf("NackResendSleep is %v, must not be negative", c.NackResendSleep))
	}
	if c.Sarama != nil {
		if err := c.Sarama.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("Sarama: %w", err))
		}
	}
	return errors.Join(errs...)
}

// DefaultSaramaConfig is the Sarama config the backend starts from: a
// protocol version every Kafka from 3.0 on speaks, a 1 s heartbeat and
// 10 s session so a rebalance is noticed quickly, and a 250 ms fetch wait.
func DefaultSaramaConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.Version = sarama.V3_0_0_0
	c.ClientID = "retry-kafka"
	c.Consumer.Group.Heartbeat.Interval = time.Second
	c.Consumer.Group.Session.Timeout = 10 * time.Second
	c.Consumer.MaxWaitTime = 250 * time.Millisecond
	c.Consumer.Return.Errors = true
	c.Metadata.Retry.Backoff = 250 * time.Millisecond
	return c
}

// saramaConfig copies the base config and sets what correctness needs.
func (c Config) saramaConfig() *sarama.Config {
	s := *c.Sarama
	s.Consumer.Offsets.Initial = sarama.OffsetOldest
	s.Consumer.Return.Errors = true
	s.Producer.Return.Successes = true
	s.Producer.Return.Errors = true
	s.Producer.RequiredAcks = sarama.WaitForAll
	if s.Producer.Retry.Max < 10 {
		s.Producer.Retry.Max = 10
	}
	return &s
}

// ParseURL reads a Config from a URL:
//
//	kafka://host:9092,host2:9092?group_prefix=app.&create_topics=true&partitions=3&replication_factor=3
//
// "kafka://embedded" is not a Config; [Open] handles it.
func ParseURL(rawURL string) (Config, error) {
	rest, ok := strings.CutPrefix(rawURL, "kafka://")
	if !ok {
		return Config{}, fmt.Errorf("kafka URL %q must start with kafka://", rawURL)
	}
	hosts, query, _ := strings.Cut(rest, "?")
	hosts = strings.TrimSuffix(hosts, "/")
	var c Config
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			c.Brokers = append(c.Brokers, h)
		}
	}
	if len(c.Brokers) == 0 {
		return Config{}, fmt.Errorf("kafka URL %q names no broker: use kafka://host:9092", rawURL)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return Config{}, fmt.Errorf("kafka URL %q: %w", rawURL, err)
	}
	for k, vs := range q {
		v := vs[len(vs)-1]
		switch k {
		case "group_prefix":
			c.ConsumerGroupPrefix = v
		case "create_topics":
			if c.CreateTopics, err = strconv.ParseBool(v); err != nil {
				return Config{}, fmt.Errorf("kafka URL %q: create_topics=%q is not a boolean", rawURL, v)
			}
		case "partitions":
			n, err := strconv.ParseInt(v, 10, 32)
			if err != nil || n < 1 {
				return Config{}, fmt.Errorf("kafka URL %q: partitions=%q is not a positive integer", rawURL, v)
			}
			c.MainTopicPartitions = int32(n)
		case "replication_factor":
			n, err := strconv.ParseInt(v, 10, 16)
			if err != nil || n < -1 || n == 0 {
				return Config{}, fmt.Errorf("kafka URL %q: replication_factor=%q is not a positive integer or -1", rawURL, v)
			}
			c.ReplicationFactor = int16(n)
		default:
			return Config{}, fmt.Errorf("kafka URL %q: unknown parameter %q (known: group_prefix, create_topics, partitions, replication_factor)", rawURL, k)
		}
	}
	return c, nil
}
