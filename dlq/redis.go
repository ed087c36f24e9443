package dlq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/retry-kafka/retry-kafka/internal/streamid"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
)

// redisPage is how many entries one XRANGE reads, and how many XADD or
// XDEL commands go in one pipeline.
const redisPage = 1000

// redisDriver reads streams with XRANGE (no consumer group), writes with
// pipelined XADD and checkpoints with a consumer group of its own whose
// last delivered ID it sets (XGROUP SETID); it never reads through it.
type redisDriver struct {
	backend *redisstream.Backend
	client  redis.UniversalClient
	prefix  string
	maxLen  int64
}

func newRedisDriver(b *redisstream.Backend) *redisDriver {
	c := b.Config()
	return &redisDriver{backend: b, client: c.Client, prefix: c.ConsumerGroupPrefix, maxLen: c.MaxLen}
}

func (d *redisDriver) system() string { return "redis" }
func (d *redisDriver) hasKeys() bool  { return false }
func (d *redisDriver) close() error   { return nil } // the client is the backend's

func (d *redisDriver) ListTopics(ctx context.Context, prefix string) ([]string, error) {
	return d.backend.ListTopics(ctx, prefix)
}

func (d *redisDriver) Lag(ctx context.Context, topic, group string) (int64, error) {
	return d.backend.Lag(ctx, topic, group)
}

func (d *redisDriver) exists(ctx context.Context, topic string) error {
	typ, err := d.client.Type(ctx, topic).Result()
	if err != nil {
		return fmt.Errorf("check redis key %s: %w", topic, err)
	}
	switch typ {
	case "stream":
		return nil
	case "none":
		return fmt.Errorf("%w: Redis stream %q", ErrUnknownTopic, topic)
	default:
		return fmt.Errorf("redis key %s holds a %s, not a stream", topic, typ)
	}
}

func (d *redisDriver) depth(ctx context.Context, topic string) (int64, []*Message, error) {
	pipe := d.client.Pipeline()
	typ := pipe.Type(ctx, topic)
	n := pipe.XLen(ctx, topic)
	first := pipe.XRangeN(ctx, topic, "-", "+", 1)
	_, _ = pipe.Exec(ctx)
	if err := typ.Err(); err != nil {
		return 0, nil, fmt.Errorf("check redis key %s: %w", topic, err)
	}
	if t := typ.Val(); t != "stream" {
		return 0, nil, d.exists(ctx, topic)
	}
	if err := errors.Join(n.Err(), first.Err()); err != nil {
		return 0, nil, fmt.Errorf("redis stream %s: %w", topic, err)
	}
	return n.Val(), d.decodeAll(topic, first.Val()), nil
}

func (d *redisDriver) heads(ctx context.Context, topic, group string) ([]*Message, error) {
	if err := d.exists(ctx, topic); err != nil {
		return nil, err
	}
	group = d.prefix + group
	groups, err := d.client.XInfoGroups(ctx, topic).Result()
	if err != nil {
		return nil, fmt.Errorf("groups of redis stream %s: %w", topic, err)
	}
	start := "-"
	if i := slices.IndexFunc(groups, func(g redis.XInfoGroup) bool { return g.Name == group }); i >= 0 {
		g := groups[i]
		if g.Pending > 0 {
			// The head is held, pending on a consumer.
			p, err := d.client.XPending(ctx, topic, group).Result()
			if err != nil {
				return nil, fmt.Errorf("pending entries of %s in %s: %w", group, topic, err)
			}
			start = p.Lower
		} else {
			start = "(" + g.LastDeliveredID
		}
	}
	entries, err := d.client.XRangeN(ctx, topic, start, "+", 1).Result()
	if err != nil {
		return nil, fmt.Errorf("head of redis stream %s: %w", topic, err)
	}
	return d.decodeAll(topic, entries), nil
}

func (d *redisDriver) get(ctx context.Context, topic, id string) (*Message, error) {
	if _, _, ok := streamid.Parse(id); !ok {
		return nil, fmt.Errorf("%w: %q is not a Redis stream entry ID (like 1700000000000-0)", ErrNotFound, id)
	}
	entries, err := d.client.XRangeN(ctx, topic, id, id, 1).Result()
	if err != nil {
		return nil, fmt.Errorf("redis stream %s: %w", topic, err)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("%w: %s has no entry %s", ErrNotFound, topic, id)
	}
	return redisMessage(topic, entries[0]), nil
}

// last returns the ID of the last entry of topic, "" when it is empty.
func (d *redisDriver) last(ctx context.Context, topic string) (string, error) {
	entries, err := d.client.XRevRangeN(ctx, topic, "+", "-", 1).Result()
	if err != nil {
		return "", fmt.Errorf("last entry of redis stream %s: %w", topic, err)
	}
	if len(entries) == 0 {
		return "", nil
	}
	return entries[0].ID, nil
}

func (d *redisDriver) scan(ctx context.Context, topic string, opts scanOptions, fn func(*Message) error) error {
	if err := d.exists(ctx, topic); err != nil {
		return err
	}
	end, err := d.last(ctx, topic)
	if err != nil || end == "" {
		return err
	}
	start := "-"
	if opts.from.id != "" {
		start = "(" + opts.from.id
	}
	if !opts.since.IsZero() {
		since := streamid.AtTime(opts.since)
		if start == "-" || streamid.Compare(since, strings.TrimPrefix(start, "(")) > 0 {
			start = since
		}
	}
	if !opts.until.IsZero() {
		// Entry IDs begin with the time they were added.
		until := streamid.AtTime(opts.until)
		if streamid.Compare(until, end) <= 0 {
			end = "(" + until
		}
	}
	// Read (and decode) the next page while fn works on this one.
	return readAhead(ctx, func(ctx context.Context, emit func([]*Message) error) error {
		for {
			entries, err := d.client.XRangeN(ctx, topic, start, end, redisPage).Result()
			if err != nil {
				return fmt.Errorf("read redis stream %s: %w", topic, err)
			}
			if len(entries) > 0 {
				if err := emit(d.decodeAll(topic, entries)); err != nil {
					return err
				}
			}
			if len(entries) < redisPage {
				return nil
			}
			start = "(" + entries[len(entries)-1].ID
		}
	}, fn)
}

func (d *redisDriver) decodeAll(topic string, entries []redis.XMessage) []*Message {
	out := make([]*Message, 0, len(entries))
	for _, e := range entries {
		out = append(out, redisMessage(topic, e))
	}
	return out
}

// redisMessage decodes an entry as watermill-redisstream writes it, or
// keeps its fields raw when it cannot.
func redisMessage(topic string, e redis.XMessage) (m *Message) {
	m = &Message{Topic: topic, ID: e.ID}
	m.Time = streamid.Time(e.ID)
	raw := func(reason string) *Message {
		m.Foreign, m.DecodeError, m.UUID, m.Payload = true, reason, "", nil
		m.Metadata = message.Metadata{}
		m.Raw = make(map[string]string, len(e.Values))
		for k, v := range e.Values {
			s, ok := v.(string)
			if !ok {
				s = fmt.Sprint(v)
			}
			m.Raw[k] = s
		}
		return m
	}
	if _, ok := e.Values[wmredis.UUIDHeaderKey]; !ok {
		return raw("not a Watermill message: no " + wmredis.UUIDHeaderKey + " field")
	}
	defer func() {
		// The unmarshaller asserts field types; an entry never crashes
		// a listing.
		if p := recover(); p != nil {
			m = raw(fmt.Sprintf("cannot decode: %v", p))
		}
	}()
	msg, err := wmredis.DefaultMarshallerUnmarshaller{}.Unmarshal(e.Values)
	if err != nil {
		return raw("cannot decode: " + err.Error())
	}
	m.UUID, m.Payload, m.Metadata = msg.UUID, msg.Payload, msg.Metadata
	if m.Metadata == nil {
		m.Metadata = message.Metadata{}
	}
	return m
}

// publish writes msgs as watermill-redisstream does, trimmed with MAXLEN ~
// like the backend's own publisher (redrive targets are never dead-letter
// streams), in one pipeline per page.
func (d *redisDriver) publish(ctx context.Context, msgs []outgoing) error {
	for chunk := range slices.Chunk(msgs, redisPage) {
		pipe := d.client.Pipeline()
		cmds := make([]*redis.StringCmd, len(chunk))
		for i, o := range chunk {
			msg := message.NewMessage(o.msg.UUID, o.msg.Payload)
			msg.Metadata = o.msg.Metadata
			values, err := wmredis.DefaultMarshallerUnmarshaller{}.Marshal(o.topic, msg)
			if err != nil {
				return fmt.Errorf("message %s: %w", o.msg.ID, err)
			}
			args := &redis.XAddArgs{Stream: o.topic, Values: values}
			if d.maxLen > 0 {
				args.MaxLen, args.Approx = d.maxLen, true
			}
			cmds[i] = pipe.XAdd(ctx, args)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			for i, c := range cmds {
				if c.Err() != nil {
					return fmt.Errorf("%d of %d messages not written, first to %s: %w", len(cmds)-i, len(msgs), chunk[i].topic, c.Err())
				}
			}
			return err
		}
	}
	return nil
}

func (d *redisDriver) checkpoint(ctx context.Context, topic, group string) (position, bool, error) {
	if err := d.exists(ctx, topic); err != nil {
		return position{}, false, err
	}
	groups, err := d.client.XInfoGroups(ctx, topic).Result()
	if err != nil {
		return position{}, false, fmt.Errorf("groups of redis stream %s: %w", topic, err)
	}
	i := slices.IndexFunc(groups, func(g redis.XInfoGroup) bool { return g.Name == d.prefix+group })
	if i < 0 || groups[i].LastDeliveredID == "0-0" {
		return position{}, false, nil
	}
	return position{id: groups[i].LastDeliveredID}, true, nil
}

func (d *redisDriver) commit(ctx context.Context, topic, group string, pos position) error {
	if pos.id == "" {
		return nil
	}
	group = d.prefix + group
	err := d.client.XGroupSetID(ctx, topic, group, pos.id).Err()
	if err != nil && strings.HasPrefix(err.Error(), "NOGROUP") {
		err = d.client.XGroupCreate(ctx, topic, group, pos.id).Err()
	}
	if err != nil {
		return fmt.Errorf("checkpoint %s on redis stream %s: %w", group, topic, err)
	}
	return nil
}

func (d *redisDriver) purge(ctx context.Context, topic string, sel purgeSelection) (PurgeResult, error) {
	if len(sel.offsets) > 0 {
		return PurgeResult{}, fmt.Errorf("%w: Redis streams have no partitions or offsets; select entries with a Filter (retryctl --before, --reason, ...)", ErrNotSupported)
	}
	m, err := sel.filter.compile()
	if err != nil {
		return PurgeResult{}, err
	}
	res := PurgeResult{DryRun: sel.dryRun}
	var ids []string
	del := func() error {
		if len(ids) == 0 || sel.dryRun {
			ids = ids[:0]
			return nil
		}
		n, err := d.client.XDel(ctx, topic, ids...).Result()
		if err != nil {
			return fmt.Errorf("delete entries of redis stream %s: %w", topic, err)
		}
		res.Deleted += n
		ids = ids[:0]
		if sel.progress != nil {
			sel.progress(res.Deleted)
		}
		return nil
	}
	err = d.scan(ctx, topic, scanOptions{since: sel.filter.From, until: sel.filter.To}, func(msg *Message) error {
		if !m.match(msg) {
			return nil
		}
		if sel.dryRun {
			res.Deleted++
			return nil
		}
		ids = append(ids, msg.ID)
		if len(ids) >= redisPage {
			return del()
		}
		return nil
	})
	if err == nil {
		err = del()
	}
	return res, err
}
