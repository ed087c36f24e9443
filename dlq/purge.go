package dlq

import (
	"context"
	"errors"
	"fmt"
)

// PurgeParams say what a purge deletes.
type PurgeParams struct {
	// Topic is the dead-letter topic to purge.
	//
	// Required.
	Topic string

	// Filter selects what to delete. On Redis any filter works (the
	// selected entries are deleted with XDEL). Kafka can only delete the
	// start of a partition, so there the filter may only set To: every
	// record stored before To is deleted; any other field is refused
	// with an error wrapping [ErrNotSupported] that says why.
	//
	// Optional. Defaults to everything stored when the purge starts.
	Filter Filter

	// BeforeOffsets deletes, on Kafka, the records of each partition
	// listed before the offset given for it (DeleteRecords); partitions
	// not listed keep theirs. It cannot be combined with Filter, and
	// Redis refuses it (streams have no offsets).
	//
	// Optional. Defaults to none.
	BeforeOffsets map[int32]int64

	// DryRun counts what would be deleted and deletes nothing.
	//
	// Optional. Defaults to false.
	DryRun bool

	// OnProgress is called with the number of messages deleted so far,
	// after each batch (Redis; Kafka deletes in one request).
	//
	// Optional. Defaults to none.
	OnProgress func(deleted int64)
}

// Validate reports every problem with p without changing it.
func (p PurgeParams) Validate() error {
	var errs []error
	if p.Topic == "" {
		errs = append(errs, errors.New("Topic is empty"))
	}
	if len(p.BeforeOffsets) > 0 && !p.Filter.IsZero() {
		errs = append(errs, errors.New("BeforeOffsets and Filter are both set; use one"))
	}
	if err := p.Filter.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// PurgeResult is what a purge did.
type PurgeResult struct {
	// Deleted is how many messages were deleted (in a dry run: would
	// have been).
	Deleted int64 `json:"deleted"`
	// DryRun is true when nothing was deleted.
	DryRun bool `json:"dry_run"`
	// Starts is, on Kafka, each partition's first offset after the purge.
	Starts map[int32]int64 `json:"starts,omitempty"`
}

// purgeSelection is a validated PurgeParams for a driver.
type purgeSelection struct {
	filter   Filter
	offsets  map[int32]int64
	dryRun   bool
	progress func(int64)
}

// Purge deletes dead letters for good: on Redis the entries p selects,
// on Kafka the records before a time or before offsets (see
// [PurgeParams]). It works on dead-letter topics only. Like a redrive, it
// takes what is stored when it starts: messages that arrive meanwhile
// stay.
func (c *Client) Purge(ctx context.Context, p PurgeParams) (*PurgeResult, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("invalid purge: %w", err)
	}
	if p.Filter.Key != "" && !c.d.hasKeys() {
		return nil, fmt.Errorf("%w: Redis stream entries have no record key", ErrInvalidFilter)
	}
	if err := c.isDeadLetterTopic(ctx, p.Topic); err != nil {
		return nil, err
	}
	res, err := c.d.purge(ctx, p.Topic, purgeSelection{filter: p.Filter, offsets: p.BeforeOffsets, dryRun: p.DryRun, progress: p.OnProgress})
	if err != nil {
		return nil, err
	}
	if !p.DryRun {
		c.logger.Info("Purged dead letters", map[string]any{"topic": p.Topic, "deleted": res.Deleted, "filter": p.Filter.String()})
	}
	return &res, nil
}
