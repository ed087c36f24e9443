package redisstream_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// waitFor bounds every wait for an outcome.
const waitFor = 10 * time.Second

// tick is how often a wait polls.
const tick = 20 * time.Millisecond

// newClient returns a client of the test's Redis server, closed when the
// test ends, after it deleted the keys named by the test's
// redistest.Name calls (the server may be shared).
func newClient(t *testing.T) *redis.Client {
	t.Helper()
	client := redis.NewClient(&redis.Options{Addr: redistest.Addr(t)})
	t.Cleanup(func() { _ = client.Close() })
	t.Cleanup(func() {
		ctx := context.Background()
		iter := client.Scan(ctx, 0, redistest.Pattern(t), 100).Iterator()
		for iter.Next(ctx) {
			_ = client.Del(ctx, iter.Val()).Err()
		}
	})
	return client
}

// newLogger returns a logger that keeps every entry, printed if the test
// fails.
func newLogger(t *testing.T) *captureLogger {
	t.Helper()
	logger := &captureLogger{mu: &sync.Mutex{}, entries: new([]watermill.CapturedMessage)}
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range logger.all() {
				t.Logf("%s %v %s err=%v %v", e.Time.Format("15:04:05.000000"), e.Level, e.Msg, e.Err, e.Fields)
			}
		}
	})
	return logger
}

// captureLogger keeps log entries; unlike watermill.CaptureLoggerAdapter
// it can be read while it is written.
type captureLogger struct {
	mu      *sync.Mutex
	entries *[]watermill.CapturedMessage
	fields  watermill.LogFields
}

func (l *captureLogger) add(level watermill.LogLevel, msg string, err error, fields watermill.LogFields) {
	l.mu.Lock()
	defer l.mu.Unlock()
	*l.entries = append(*l.entries, watermill.CapturedMessage{Level: level, Time: time.Now(), Fields: l.fields.Add(fields), Msg: msg, Err: err})
}

func (l *captureLogger) Error(msg string, err error, fields watermill.LogFields) {
	l.add(watermill.ErrorLogLevel, msg, err, fields)
}
func (l *captureLogger) Info(msg string, fields watermill.LogFields) {
	l.add(watermill.InfoLogLevel, msg, nil, fields)
}
func (l *captureLogger) Debug(msg string, fields watermill.LogFields) {
	l.add(watermill.DebugLogLevel, msg, nil, fields)
}
func (l *captureLogger) Trace(msg string, fields watermill.LogFields) {
	l.add(watermill.TraceLogLevel, msg, nil, fields)
}
func (l *captureLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return &captureLogger{mu: l.mu, entries: l.entries, fields: l.fields.Copy().Add(fields)}
}

func (l *captureLogger) all() []watermill.CapturedMessage {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]watermill.CapturedMessage(nil), *l.entries...)
}

// at returns the entries of one level.
func (l *captureLogger) at(level watermill.LogLevel) []watermill.CapturedMessage {
	var out []watermill.CapturedMessage
	for _, e := range l.all() {
		if e.Level == level {
			out = append(out, e)
		}
	}
	return out
}

// newBackend builds a backend on client, closed when the test ends.
func newBackend(t *testing.T, client redis.UniversalClient, config redisstream.Config, logger watermill.LoggerAdapter) *redisstream.Backend {
	t.Helper()
	config.Client = client
	b, err := redisstream.New(context.Background(), config, logger)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b
}

// runRouter runs a router with one handler with tiered retries, closed when
// the test ends.
func runRouter(t *testing.T, b tiered.Backend, policy tiered.Policy, name, topic string, h message.NoPublishHandlerFunc, logger watermill.LoggerAdapter) (*message.Router, *router.Handler) {
	t.Helper()
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: waitFor}, logger)
	require.NoError(t, err)
	retrier, err := router.New(router.Config{Backend: b, Policy: policy}, logger)
	require.NoError(t, err)
	handler, err := retrier.AddConsumerHandler(r, name, topic, h)
	require.NoError(t, err)
	go func() { _ = r.Run(context.Background()) }()
	select {
	case <-r.Running():
	case <-time.After(waitFor):
		t.Fatal("router did not start")
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, handler
}

// call is one run of a handler.
type call struct {
	topic string
	uuid  string
	at    time.Time // wall clock, like due times
	due   time.Time // the due time the message carried (zero on main)
}

// recorder records the runs of a handler.
type recorder struct {
	mu    sync.Mutex
	calls []call
}

func (r *recorder) record(msg *message.Message) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Due times are wall-clock instants, possibly stamped by another
	// process: "never early" is a statement about the wall clock, so the
	// recorder reads it too (a monotonic reading drifts from it when the
	// wall clock is stepped).
	due, _, _ := tiered.DueAt(msg.Metadata)
	r.calls = append(r.calls, call{topic: message.SubscribeTopicFromCtx(msg.Context()), uuid: msg.UUID, at: time.Now().Round(0), due: due})
	return len(r.calls)
}

func (r *recorder) all() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]call(nil), r.calls...)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

func (r *recorder) topics() []string {
	var out []string
	for _, c := range r.all() {
		out = append(out, c.topic)
	}
	return out
}

// streamMessages decodes every entry of a stream, without consuming it.
func streamMessages(client redis.UniversalClient, stream string) ([]*message.Message, []string, error) {
	entries, err := client.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil {
		return nil, nil, err
	}
	var msgs []*message.Message
	var ids []string
	for _, e := range entries {
		m, err := wmredis.DefaultMarshallerUnmarshaller{}.Unmarshal(e.Values)
		if err != nil {
			return nil, nil, err
		}
		msgs = append(msgs, m)
		ids = append(ids, e.ID)
	}
	return msgs, ids, nil
}

// waitStream waits until stream holds n entries and returns them decoded.
func waitStream(t *testing.T, client redis.UniversalClient, stream string, n int) []*message.Message {
	t.Helper()
	var msgs []*message.Message
	require.Eventually(t, func() bool {
		var err error
		msgs, _, err = streamMessages(client, stream)
		return err == nil && len(msgs) >= n
	}, waitFor, tick, "stream %s never held %d entries", stream, n)
	require.Len(t, msgs, n)
	return msgs
}

// xlen returns the length of a stream (0 when it does not exist).
func xlen(t *testing.T, client redis.UniversalClient, stream string) int64 {
	t.Helper()
	n, err := client.XLen(context.Background(), stream).Result()
	require.NoError(t, err)
	return n
}

// pending returns the number of entries read but not acked in a group (0
// when the stream or group does not exist).
func pending(client redis.UniversalClient, stream, group string) int64 {
	p, err := client.XPending(context.Background(), stream, group).Result()
	if err != nil {
		if strings.HasPrefix(err.Error(), "NOGROUP") {
			return 0
		}
		return -1
	}
	return p.Count
}

// errorLogs returns the Error entries of a logger.
func errorLogs(logger *captureLogger) []watermill.CapturedMessage {
	return logger.at(watermill.ErrorLogLevel)
}
