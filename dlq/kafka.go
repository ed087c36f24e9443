package dlq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/internal/kafkaoffsets"
	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
)

const (
	// fetchBytes is how much one fetch of a scan reads from a partition.
	// A record batch larger than that is still read whole (the fetch
	// size grows to fit it).
	fetchBytes = 1 << 20
	// maxFetchBytes bounds that growth.
	maxFetchBytes = 256 << 20
	// headBytes is the fetch size of reads that want one record.
	headBytes = 64 << 10
	// kafkaTries bounds the attempts of a fetch whose leader moved.
	kafkaTries = 5
)

// kafkaDriver reads partitions with fetch requests of its own (no
// consumer group, no commits), writes with a synchronous producer and
// checkpoints with offset commits of a group without members.
type kafkaDriver struct {
	backend *kafka.Backend
	prefix  string
	client  sarama.Client
	admin   sarama.ClusterAdmin
	version int16 // of fetch requests

	producerOnce sync.Once
	producer     sarama.SyncProducer
	producerErr  error
}

func newKafkaDriver(b *kafka.Backend) (*kafkaDriver, error) {
	config := b.SaramaConfig()
	client, err := sarama.NewClient(b.Brokers(), config)
	if err != nil {
		return nil, fmt.Errorf("kafka client for %v: %w", b.Brokers(), err)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("kafka admin for %v: %w", b.Brokers(), err)
	}
	return &kafkaDriver{
		backend: b,
		prefix:  b.Config().ConsumerGroupPrefix,
		client:  client,
		admin:   admin,
		version: fetchVersion(config.Version),
	}, nil
}

// fetchVersion is the highest fetch request version that v speaks, up to
// 12 (13 replaces topic names with IDs).
func fetchVersion(v sarama.KafkaVersion) int16 {
	switch {
	case v.IsAtLeast(sarama.V2_7_0_0):
		return 12
	case v.IsAtLeast(sarama.V2_3_0_0):
		return 11
	case v.IsAtLeast(sarama.V2_1_0_0):
		return 10
	case v.IsAtLeast(sarama.V1_1_0_0):
		return 7
	case v.IsAtLeast(sarama.V0_11_0_0):
		return 5
	default:
		return 4 // record batches (message format v2) need 4
	}
}

func (d *kafkaDriver) system() string { return "kafka" }
func (d *kafkaDriver) hasKeys() bool  { return true }

func (d *kafkaDriver) ListTopics(ctx context.Context, prefix string) ([]string, error) {
	return d.backend.ListTopics(ctx, prefix)
}

func (d *kafkaDriver) Lag(ctx context.Context, topic, group string) (int64, error) {
	return d.backend.Lag(ctx, topic, group)
}

func (d *kafkaDriver) close() error {
	var errs []error
	if d.producer != nil {
		errs = append(errs, d.producer.Close())
	}
	errs = append(errs, d.admin.Close()) // closes the client too
	return errors.Join(errs...)
}

// partitions returns topic's partitions, or an error wrapping
// ErrUnknownTopic.
func (d *kafkaDriver) partitions(ctx context.Context, topic string) ([]int32, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ps, err := kafkaoffsets.Partitions(d.admin, topic)
	if errors.Is(err, kafkaoffsets.ErrUnknownTopic) {
		return nil, fmt.Errorf("%w: Kafka topic %q", ErrUnknownTopic, topic)
	}
	return ps, err
}

func (d *kafkaDriver) exists(ctx context.Context, topic string) error {
	_, err := d.partitions(ctx, topic)
	return err
}

func (d *kafkaDriver) bounds(ctx context.Context, topic string) ([]int32, map[int32]kafkaoffsets.Bounds, error) {
	ps, err := d.partitions(ctx, topic)
	if err != nil {
		return nil, nil, err
	}
	b, err := kafkaoffsets.Range(d.client, topic, ps)
	if err != nil {
		return nil, nil, err
	}
	return ps, b, nil
}

func (d *kafkaDriver) depth(ctx context.Context, topic string) (int64, []*Message, error) {
	ps, bounds, err := d.bounds(ctx, topic)
	if err != nil {
		return 0, nil, err
	}
	var n int64
	at := map[int32]int64{}
	for _, p := range ps {
		n += bounds[p].Len()
		if bounds[p].Len() > 0 {
			at[p] = bounds[p].Start
		}
	}
	firsts, err := d.firstRecords(ctx, topic, at, bounds)
	return n, firsts, err
}

func (d *kafkaDriver) heads(ctx context.Context, topic, group string) ([]*Message, error) {
	ps, bounds, err := d.bounds(ctx, topic)
	if err != nil {
		return nil, err
	}
	committed, err := kafkaoffsets.Committed(d.admin, d.prefix+group, topic, ps)
	if err != nil {
		return nil, err
	}
	at := map[int32]int64{}
	for _, p := range ps {
		from := max(committed[p], bounds[p].Start)
		if from < bounds[p].End {
			at[p] = from
		}
	}
	return d.firstRecords(ctx, topic, at, bounds)
}

// firstRecords reads the first record at or after each offset of at,
// concurrently across partitions.
func (d *kafkaDriver) firstRecords(ctx context.Context, topic string, at map[int32]int64, bounds map[int32]kafkaoffsets.Bounds) ([]*Message, error) {
	var mu sync.Mutex
	var out []*Message
	var errs []error
	var wg sync.WaitGroup
	for p, offset := range at {
		wg.Go(func() {
			var first *Message
			err := d.read(ctx, topic, p, offset, bounds[p].End, headBytes, func(msgs []*Message) error {
				first = msgs[0]
				return errStopRead
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil && !errors.Is(err, errStopRead) {
				errs = append(errs, err)
			} else if first != nil {
				out = append(out, first)
			}
		})
	}
	wg.Wait()
	slices.SortFunc(out, func(a, b *Message) int { return int(a.Partition - b.Partition) })
	return out, errors.Join(errs...)
}

var errStopRead = errors.New("stop reading")

func (d *kafkaDriver) get(ctx context.Context, topic, id string) (*Message, error) {
	ps, o, ok := strings.Cut(id, "/")
	p, err1 := strconv.ParseInt(ps, 10, 32)
	offset, err2 := strconv.ParseInt(o, 10, 64)
	if !ok || err1 != nil || err2 != nil || p < 0 || offset < 0 {
		return nil, fmt.Errorf("%w: %q is not a Kafka message ID (partition/offset, like 0/42)", ErrNotFound, id)
	}
	partitions, bounds, err := d.bounds(ctx, topic)
	if err != nil {
		return nil, err
	}
	b, known := bounds[int32(p)]
	if !slices.Contains(partitions, int32(p)) || !known || offset < b.Start || offset >= b.End {
		return nil, fmt.Errorf("%w: %s has no record %s", ErrNotFound, topic, id)
	}
	var found *Message
	err = d.read(ctx, topic, int32(p), offset, offset+1, headBytes, func(msgs []*Message) error {
		if msgs[0].Offset == offset {
			found = msgs[0]
		}
		return errStopRead
	})
	if err != nil && !errors.Is(err, errStopRead) {
		return nil, err
	}
	if found == nil {
		return nil, fmt.Errorf("%w: %s has no record %s (compacted, or a transaction marker)", ErrNotFound, topic, id)
	}
	return found, nil
}

func (d *kafkaDriver) scan(ctx context.Context, topic string, opts scanOptions, fn func(*Message) error) error {
	ps, bounds, err := d.bounds(ctx, topic)
	if err != nil {
		return err
	}
	starts := map[int32]int64{}
	for _, p := range ps {
		starts[p] = bounds[p].Start
		if o, ok := opts.from.offsets[p]; ok {
			starts[p] = max(starts[p], o)
		}
	}
	if !opts.since.IsZero() {
		// Every record before the first offset stamped at or after
		// since is stamped before it.
		byTime, err := kafkaoffsets.At(d.client, topic, ps, opts.since.UnixMilli())
		if err != nil {
			return err
		}
		for _, p := range ps {
			starts[p] = max(starts[p], byTime[p])
		}
	}
	for _, p := range ps {
		if starts[p] >= bounds[p].End {
			continue
		}
		// The next fetch runs while fn works on this one's messages.
		err := readAhead(ctx, func(ctx context.Context, emit func([]*Message) error) error {
			return d.read(ctx, topic, p, starts[p], bounds[p].End, fetchBytes, emit)
		}, fn)
		if err != nil {
			return err
		}
	}
	return nil
}

// read fetches the records of topic/p from offset from up to end
// (exclusive) and calls fn with each fetch's records, in offset order.
// Control records (transaction markers) are skipped. Records deleted
// meanwhile (retention, DeleteRecords) are skipped over.
func (d *kafkaDriver) read(ctx context.Context, topic string, p int32, from, end int64, size int32, fn func([]*Message) error) error {
	offset := from
	tries := 0
	for offset < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		block, err := d.fetch(topic, p, offset, size)
		if err == nil && block.Err != sarama.ErrNoError {
			err = block.Err
		}
		switch {
		case errors.Is(err, sarama.ErrOffsetOutOfRange):
			start, err := kafkaoffsets.At(d.client, topic, []int32{p}, sarama.OffsetOldest)
			if err != nil {
				return err
			}
			if start[p] <= offset {
				return fmt.Errorf("read %s/%d at %d: offset out of range", topic, p, offset)
			}
			offset = start[p] // deleted by retention or a purge
			continue
		case err != nil:
			if tries++; tries >= kafkaTries {
				return fmt.Errorf("read %s/%d at %d: %w", topic, p, offset, err)
			}
			_ = d.client.RefreshMetadata(topic)
			select {
			case <-time.After(time.Duration(tries) * 100 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		msgs, next, partial, err := decodeBlock(topic, p, offset, end, block)
		if err != nil {
			return err
		}
		if next == offset {
			switch {
			case partial || block.Partial:
				// Only part of a batch came back: it is larger
				// than size.
				if size >= maxFetchBytes {
					return fmt.Errorf("read %s/%d at %d: a record batch is larger than %d bytes", topic, p, offset, maxFetchBytes)
				}
				size = min(size*4, maxFetchBytes)
			case block.HighWaterMarkOffset <= offset:
				return nil // the partition was truncated below end
			case tries < kafkaTries:
				// An empty answer (a throttled fetch): ask again.
				tries++
				select {
				case <-time.After(time.Duration(tries) * 100 * time.Millisecond):
				case <-ctx.Done():
					return ctx.Err()
				}
			default:
				// Still nothing: a batch that compaction emptied,
				// which the decoder drops. Step over its offset.
				offset++
				tries = 0
			}
			continue
		}
		tries = 0
		offset = next
		if len(msgs) > 0 {
			if err := fn(msgs); err != nil {
				return err
			}
		}
	}
	return nil
}

// fetch sends one fetch request for one partition to its leader.
func (d *kafkaDriver) fetch(topic string, p int32, offset int64, size int32) (*sarama.FetchResponseBlock, error) {
	leader, err := d.client.Leader(topic, p)
	if err != nil {
		return nil, err
	}
	req := &sarama.FetchRequest{
		Version:     d.version,
		MaxWaitTime: 100, // ms; the data is there, nothing waits for more
		MinBytes:    1,
		MaxBytes:    size,
		Isolation:   sarama.ReadUncommitted, // what the application's consumers read
	}
	if req.Version >= 7 {
		req.SessionID, req.SessionEpoch = 0, -1 // no fetch session
	}
	req.AddBlock(topic, p, offset, size, -1)
	resp, err := leader.Fetch(req)
	if err != nil {
		_ = leader.Close() // reconnects on next use
		return nil, err
	}
	block := resp.GetBlock(topic, p)
	if block == nil {
		return nil, sarama.ErrIncompleteResponse
	}
	return block, nil
}

// decodeBlock turns the complete record batches of a fetch into messages
// from offset on, below end, and returns the offset after the last
// complete batch.
func decodeBlock(topic string, p int32, offset, end int64, block *sarama.FetchResponseBlock) (msgs []*Message, next int64, partial bool, err error) {
	next = offset
	for _, recs := range block.RecordsSet {
		if recs == nil {
			continue
		}
		batch := recs.RecordBatch
		if batch == nil {
			if recs.MsgSet != nil && len(recs.MsgSet.Messages) > 0 {
				return nil, offset, false, fmt.Errorf("read %s/%d: records in message format v0/v1; the dlq package reads format v2 (Kafka 0.11 and later)", topic, p)
			}
			continue
		}
		if batch.PartialTrailingRecord {
			partial = true
			break
		}
		if !batch.Control {
			for _, rec := range batch.Records {
				off := batch.FirstOffset + rec.OffsetDelta
				if off < offset || off >= end {
					continue
				}
				ts := batch.FirstTimestamp.Add(rec.TimestampDelta)
				if batch.LogAppendTime {
					ts = batch.MaxTimestamp
				}
				msgs = append(msgs, kafkaMessage(topic, p, off, ts, rec))
			}
		}
		next = max(next, batch.FirstOffset+int64(batch.LastOffsetDelta)+1)
	}
	return msgs, next, partial, nil
}

// kafkaMessage decodes a record as watermill-kafka's DefaultMarshaler
// writes it: the UUID in a header, every other header a metadata entry.
func kafkaMessage(topic string, p int32, offset int64, ts time.Time, rec *sarama.Record) *Message {
	m := &Message{
		Topic:     topic,
		ID:        strconv.FormatInt(int64(p), 10) + "/" + strconv.FormatInt(offset, 10),
		Partition: p,
		Offset:    offset,
		Time:      ts,
		Key:       rec.Key,
		Payload:   rec.Value,
		Metadata:  make(message.Metadata, len(rec.Headers)),
		Foreign:   true,
	}
	for _, h := range rec.Headers {
		if h == nil {
			continue
		}
		if string(h.Key) == wkafka.UUIDHeaderKey {
			m.UUID, m.Foreign = string(h.Value), false
			continue
		}
		m.Metadata[string(h.Key)] = string(h.Value)
	}
	return m
}

func (d *kafkaDriver) getProducer() (sarama.SyncProducer, error) {
	d.producerOnce.Do(func() {
		d.producer, d.producerErr = sarama.NewSyncProducerFromClient(d.client)
	})
	return d.producer, d.producerErr
}

// publish writes msgs as watermill-kafka's DefaultMarshaler does, with
// each message's own record key (none when it has none).
func (d *kafkaDriver) publish(ctx context.Context, msgs []outgoing) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	producer, err := d.getProducer()
	if err != nil {
		return fmt.Errorf("kafka producer: %w", err)
	}
	recs := make([]*sarama.ProducerMessage, len(msgs))
	for i, o := range msgs {
		rec := &sarama.ProducerMessage{Topic: o.topic, Value: sarama.ByteEncoder(o.msg.Payload)}
		if o.msg.Key != nil {
			rec.Key = sarama.ByteEncoder(o.msg.Key)
		}
		rec.Headers = make([]sarama.RecordHeader, 0, len(o.msg.Metadata)+1)
		if !o.msg.Foreign {
			rec.Headers = append(rec.Headers, sarama.RecordHeader{Key: []byte(wkafka.UUIDHeaderKey), Value: []byte(o.msg.UUID)})
		}
		for k, v := range o.msg.Metadata {
			rec.Headers = append(rec.Headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
		}
		recs[i] = rec
	}
	if err := producer.SendMessages(recs); err != nil {
		var perrs sarama.ProducerErrors
		if errors.As(err, &perrs) && len(perrs) > 0 {
			return fmt.Errorf("%d of %d messages not written, first to %s: %w", len(perrs), len(recs), perrs[0].Msg.Topic, perrs[0].Err)
		}
		return err
	}
	return nil
}

func (d *kafkaDriver) checkpoint(ctx context.Context, topic, group string) (position, bool, error) {
	ps, err := d.partitions(ctx, topic)
	if err != nil {
		return position{}, false, err
	}
	committed, err := kafkaoffsets.Committed(d.admin, d.prefix+group, topic, ps)
	if err != nil {
		return position{}, false, err
	}
	pos := position{offsets: map[int32]int64{}}
	for p, o := range committed {
		if o >= 0 {
			pos.offsets[p] = o
		}
	}
	return pos, len(pos.offsets) > 0, nil
}

func (d *kafkaDriver) commit(ctx context.Context, topic, group string, pos position) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(pos.offsets) == 0 {
		return nil
	}
	return kafkaoffsets.Commit(d.client, d.prefix+group, topic, pos.offsets)
}

func (d *kafkaDriver) purge(ctx context.Context, topic string, sel purgeSelection) (PurgeResult, error) {
	if !sel.filter.timeOnly() || !sel.filter.From.IsZero() {
		return PurgeResult{}, fmt.Errorf("%w: Kafka cannot delete single records: a partition can only lose a prefix, "+
			"every record before an offset (DeleteRecords). Purge everything (no filter), everything stored before a time "+
			"(Filter.To, retryctl --before), or everything before an offset per partition (retryctl --before-offset); "+
			"to keep some messages, redrive or export them first", ErrNotSupported)
	}
	ps, bounds, err := d.bounds(ctx, topic)
	if err != nil {
		return PurgeResult{}, err
	}
	targets := map[int32]int64{}
	switch {
	case len(sel.offsets) > 0:
		for p, o := range sel.offsets {
			b, ok := bounds[p]
			if !ok {
				return PurgeResult{}, fmt.Errorf("%s has no partition %d (it has %d)", topic, p, len(ps))
			}
			if o < 0 {
				return PurgeResult{}, fmt.Errorf("offset %d of partition %d is negative", o, p)
			}
			targets[p] = min(o, b.End)
		}
	case !sel.filter.To.IsZero():
		byTime, err := kafkaoffsets.At(d.client, topic, ps, sel.filter.To.UnixMilli())
		if err != nil {
			return PurgeResult{}, err
		}
		for _, p := range ps {
			targets[p] = min(byTime[p], bounds[p].End)
		}
	default:
		for _, p := range ps {
			targets[p] = bounds[p].End
		}
	}
	res := PurgeResult{DryRun: sel.dryRun, Starts: map[int32]int64{}}
	deletes := map[int32]int64{}
	for p, o := range targets {
		res.Starts[p] = max(o, bounds[p].Start)
		if o > bounds[p].Start {
			res.Deleted += o - bounds[p].Start
			deletes[p] = o
		}
	}
	if sel.dryRun || len(deletes) == 0 {
		return res, nil
	}
	if err := ctx.Err(); err != nil {
		return PurgeResult{}, err
	}
	if err := d.admin.DeleteRecords(topic, deletes); err != nil {
		return PurgeResult{}, fmt.Errorf("delete records of %s: %w", topic, err)
	}
	return res, nil
}
