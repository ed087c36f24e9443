package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"golang.org/x/time/rate"

	"github.com/retry-kafka/retry-kafka/dlq"
)

func (a *app) dlqCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Read, count, redrive and purge dead letters",
		Long: `Work on one dead-letter topic (TOPIC, as "retryctl topics" lists them):

  ls       list its messages, oldest first (Kafka: partition by partition)
  show     one message in full, by ID (Kafka "partition/offset", Redis entry ID) or UUID
  stats    count them, by reason (numbers and IDs folded), handler, original topic
  export   write them as JSON Lines
  redrive  send them back to their original topic (or first tier, or a topic)
  purge    delete them

ls, stats, export, redrive and purge take the same filters (--since, --until,
--reason, --handler, --original-topic, --key, --uuid). ls, show, stats and
export also read tier topics, or any topic.`,
	}
	cmd.AddCommand(a.lsCommand(), a.showCommand(), a.statsCommand(), a.exportCommand(), a.redriveCommand(), a.purgeCommand())
	return cmd
}

func (a *app) lsCommand() *cobra.Command {
	var ff filterFlags
	var limit int
	cmd := &cobra.Command{
		Use:   "ls TOPIC",
		Short: "List the messages of a dead-letter topic",
		Long: `List the messages of TOPIC that the filters select: ID, when the broker
stored it, UUID, handler, failed attempts, earlier redrives and reason.
Nothing is consumed. --json prints one JSON object per line, as export does.`,
		Example: `  retryctl dlq ls orders.billing.dlq
  retryctl dlq ls orders.billing.dlq --reason 'declined' --since 24h --limit 0
  retryctl dlq ls orders.billing.dlq --json | jq -r .uuid`,
		Args: args(1, "one TOPIC"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			ctx := cmd.Context()
			c, filter, err := a.openFiltered(ctx, &ff)
			if err != nil {
				return err
			}
			if limit < 0 {
				return withCode(exitUsage, fmt.Errorf("--limit %d: must be 0 (no limit) or more", limit))
			}
			var t *table
			if !a.json {
				t = newTable(a.stdout, "ID", "STORED", "UUID", "HANDLER", "ATTEMPTS", "REDRIVES", "REASON")
			}
			n := 0
			more := false
			for msg, err := range c.Messages(ctx, argv[0], filter) {
				if err != nil {
					if t != nil {
						_ = t.flush()
					}
					return err
				}
				if limit > 0 && n == limit {
					more = true
					break
				}
				n++
				if a.json {
					if err := printLine(a.stdout, msg); err != nil {
						return err
					}
					continue
				}
				reason := msg.Reason()
				if msg.Raw != nil {
					reason = "(raw entry) " + msg.DecodeError
				} else if msg.Foreign && reason == "" {
					reason = "(foreign record)"
				}
				t.row(msg.ID, stamp(msg.Time), orDash(msg.UUID), orDash(msg.Handler()), strconv.Itoa(msg.Attempts()), strconv.Itoa(msg.Redrives()), clip(reason, 100))
			}
			if t != nil {
				if err := t.flush(); err != nil {
					return err
				}
				switch {
				case more:
					fmt.Fprintf(a.stderr, "(first %d shown; --limit 0 lists all)\n", limit)
				case n == 0:
					fmt.Fprintln(a.stderr, "(no messages)")
				}
			}
			return nil
		},
	}
	ff.register(cmd.Flags())
	cmd.Flags().IntVar(&limit, "limit", 50, "list at most this many messages (0: all)")
	return cmd
}

// openFiltered reads the filter flags, then opens the client.
func (a *app) openFiltered(ctx context.Context, ff *filterFlags) (*dlq.Client, dlq.Filter, error) {
	filter, err := ff.filter(time.Now())
	if err != nil {
		return nil, dlq.Filter{}, err
	}
	c, err := a.open(ctx)
	return c, filter, err
}

func printLine(w io.Writer, msg *dlq.Message) error {
	b, err := msg.MarshalJSON()
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// idShape tells a message ID (Kafka "0/42", Redis "1700000000000-0")
// from a UUID.
var idShape = regexp.MustCompile(`^(\d+/\d+|\d+-\d+)$`)

func (a *app) showCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show TOPIC ID|UUID",
		Short: "Show one message in full: metadata, payload, reason",
		Long: `Show one message of TOPIC: by its ID (Kafka "partition/offset" such as 0/42,
Redis entry ID such as 1700000000000-0), or by UUID (found by reading the
topic). The payload is printed as text when it is UTF-8, else base64.`,
		Example: `  retryctl dlq show orders.billing.dlq 0/42
  retryctl dlq show orders.billing.dlq 6d1f0f5e-7a43-4b8e-9c56-3f2a8b9e41d7 --json`,
		Args: args(2, "TOPIC and an ID or UUID"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			ctx := cmd.Context()
			c, err := a.open(ctx)
			if err != nil {
				return err
			}
			topic, ref := argv[0], argv[1]
			var msg *dlq.Message
			if idShape.MatchString(ref) {
				if msg, err = c.Get(ctx, topic, ref); err != nil {
					return err
				}
			} else {
				for m, err := range c.Messages(ctx, topic, dlq.Filter{UUID: ref}) {
					if err != nil {
						return err
					}
					msg = m
					break
				}
				if msg == nil {
					return fmt.Errorf("%w: no message with UUID %s in %s", dlq.ErrNotFound, ref, topic)
				}
			}
			if a.json {
				return printLine(a.stdout, msg)
			}
			return a.printMessage(msg)
		},
	}
}

func (a *app) printMessage(msg *dlq.Message) error {
	w := a.stdout
	t := newTable(w, "FIELD", "VALUE")
	t.row("topic", msg.Topic)
	t.row("id", msg.ID)
	t.row("stored", stamp(msg.Time))
	t.row("uuid", orDash(msg.UUID))
	if msg.Key != nil {
		t.row("key", quoted(msg.Key))
	}
	t.row("handler", orDash(msg.Handler()))
	t.row("original topic", orDash(msg.OriginalTopic()))
	t.row("attempts", strconv.Itoa(msg.Attempts()))
	t.row("redrives", strconv.Itoa(msg.Redrives()))
	if msg.Foreign {
		t.row("foreign", "yes: not written by Watermill")
	}
	if msg.DecodeError != "" {
		t.row("decode error", msg.DecodeError)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if r := msg.Reason(); r != "" {
		fmt.Fprintf(w, "\nReason:\n  %s\n", r)
	}
	for _, section := range []struct {
		name string
		m    map[string]string
	}{{"Metadata", msg.Metadata}, {"Raw fields", msg.Raw}} {
		if len(section.m) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s:\n", section.name)
		mt := newTable(w, "  KEY", "VALUE")
		for _, k := range slices.Sorted(maps.Keys(section.m)) {
			mt.row("  "+k, quoted([]byte(section.m[k])))
		}
		if err := mt.flush(); err != nil {
			return err
		}
	}
	if msg.Raw == nil {
		fmt.Fprintf(w, "\nPayload (%d bytes):\n%s\n", len(msg.Payload), quoted(msg.Payload))
	}
	return nil
}

// quoted prints b as text when it is UTF-8, else as base64.
func quoted(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return "base64:" + base64.StdEncoding.EncodeToString(b)
}

func (a *app) statsCommand() *cobra.Command {
	var ff filterFlags
	var top int
	cmd := &cobra.Command{
		Use:   "stats TOPIC",
		Short: "Count dead letters by reason, handler and original topic",
		Long: `Read TOPIC (the messages the filters select) and count them: how many, the
oldest and newest, how many are foreign or were redriven before, and a
histogram of reasons in which numbers, UUIDs and hex IDs are folded (N,
<uuid>, <hex>) so that one cause counts once.`,
		Example: `  retryctl dlq stats orders.billing.dlq
  retryctl dlq stats orders.billing.dlq --since 1h --json`,
		Args: args(1, "one TOPIC"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			ctx := cmd.Context()
			c, filter, err := a.openFiltered(ctx, &ff)
			if err != nil {
				return err
			}
			s, err := c.Stats(ctx, argv[0], filter)
			if err != nil {
				return err
			}
			if a.json {
				return printJSON(a.stdout, s)
			}
			return a.printStats(s, top)
		},
	}
	ff.register(cmd.Flags())
	cmd.Flags().IntVar(&top, "top", 20, "show this many reasons, handlers and topics (0: all)")
	return cmd
}

func (a *app) printStats(s *dlq.Stats, top int) error {
	w := a.stdout
	now := time.Now()
	t := newTable(w, "TOPIC", "MESSAGES", "SCANNED", "OLDEST", "NEWEST", "FOREIGN", "REDRIVEN")
	t.row(s.Topic, itoa(s.Count), itoa(s.Scanned), ago(s.Oldest, now), ago(s.Newest, now), itoa(s.Foreign), itoa(s.Redriven))
	if err := t.flush(); err != nil {
		return err
	}
	section := func(title string, counts []dlq.Count, other int64) error {
		if len(counts) == 0 {
			return nil
		}
		fmt.Fprintf(w, "\n")
		t := newTable(w, "COUNT", "SHARE", title)
		for i, c := range counts {
			if top > 0 && i == top {
				var rest int64
				for _, c := range counts[i:] {
					rest += c.Count
				}
				other += rest
				break
			}
			t.row(itoa(c.Count), share(c.Count, s.Count), orDash(c.Value))
		}
		if other > 0 {
			t.row(itoa(other), share(other, s.Count), "(others)")
		}
		return t.flush()
	}
	if err := section("REASON", s.Reasons, s.OtherReasons); err != nil {
		return err
	}
	if err := section("HANDLER", s.Handlers, 0); err != nil {
		return err
	}
	return section("ORIGINAL TOPIC", s.OriginalTopics, 0)
}

func share(n, of int64) string {
	if of == 0 {
		return "-"
	}
	return strconv.FormatFloat(100*float64(n)/float64(of), 'f', 1, 64) + "%"
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func (a *app) exportCommand() *cobra.Command {
	var ff filterFlags
	var out string
	cmd := &cobra.Command{
		Use:   "export TOPIC",
		Short: "Write dead letters as JSON Lines",
		Long: `Write the messages of TOPIC that the filters select as JSON Lines, one object
per message: topic, id, partition and offset (Kafka), time, uuid, key,
metadata, payload (text when UTF-8, else base64, as payload_encoding says),
reason; raw and decode_error for an entry Watermill cannot decode. It
streams: memory stays flat whatever the topic holds.`,
		Example: `  retryctl dlq export orders.billing.dlq > billing-dlq.jsonl
  retryctl dlq export orders.billing.dlq --reason timeout -o timeouts.jsonl`,
		Args: args(1, "one TOPIC"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			ctx := cmd.Context()
			c, filter, err := a.openFiltered(ctx, &ff)
			if err != nil {
				return err
			}
			w := a.stdout
			if out != "" && out != "-" {
				f, err := os.Create(out)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			n, err := c.Export(ctx, w, argv[0], filter)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "exported %d messages\n", n)
			return nil
		},
	}
	ff.register(cmd.Flags())
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to this file instead of stdout")
	return cmd
}

func (a *app) redriveCommand() *cobra.Command {
	var ff filterFlags
	var to, name string
	var perSecond float64
	var maxCount int64
	var maxRedrives int
	var dryRun, yes bool
	cmd := &cobra.Command{
		Use:   "redrive TOPIC",
		Short: "Send dead letters back to their handler",
		Long: `Send the dead letters of TOPIC that the filters select back to their handler,
once what made them fail is fixed. Each keeps its UUID, payload, key and
your metadata; its retry metadata is cleared, so it starts a new life, and
its redrive count goes up. Messages redriven --max-redrives times already are
skipped and reported (exit code 5), so a message that keeps failing cannot
loop.

--to original (default) sends each to the topic its handler consumes;
--to first-tier to its handler's shortest tier, due at once; --to TOPIC to
that topic.

What moves is fixed when it starts (up to the topic's end then). It moves
batch by batch and checkpoints after the broker confirmed each, in a
consumer group of its own on TOPIC (--name, default from --to and the
filters): interrupted, run it again to move the rest; finished, run it again
to move only what arrived since. The dead-letter topic is not changed
(purge it afterwards).

--dry-run prints what would move and why it failed, and changes nothing.
Without --dry-run it asks for confirmation on stdin unless --yes.`,
		Example: `  retryctl dlq redrive orders.billing.dlq --dry-run
  retryctl dlq redrive orders.billing.dlq --reason 'gateway timeout' --rate 100 --yes
  retryctl dlq redrive orders.billing.dlq --to first-tier --max 1000
  retryctl dlq redrive orders.billing.dlq --to orders.replay --name replay-1`,
		Args: args(1, "one TOPIC"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			ctx := cmd.Context()
			filter, err := ff.filter(time.Now())
			if err != nil {
				return err
			}
			p := dlq.RedriveParams{Topic: argv[0], Filter: filter, Name: name, MaxRedrives: maxRedrives, Max: maxCount, DryRun: dryRun}
			switch to {
			case "", "original":
			case "first-tier":
				p.To = dlq.ToFirstTier
			default:
				p.To, p.TargetTopic = dlq.ToTopic, to
			}
			if perSecond < 0 {
				return withCode(exitUsage, fmt.Errorf("--rate %v: must be positive (0: no limit)", perSecond))
			}
			if perSecond > 0 {
				p.Limiter = rate.NewLimiter(rate.Limit(perSecond), max(1, int(perSecond/10)))
			}
			if err := p.Validate(); err != nil {
				return withCode(exitUsage, err)
			}
			c, err := a.open(ctx)
			if err != nil {
				return err
			}
			backlog, err := c.Backlog(ctx, p)
			if err != nil {
				return err
			}
			if !dryRun && !yes {
				dest := "their original topics"
				switch p.To {
				case dlq.ToFirstTier:
					dest = "their handlers' first tiers"
				case dlq.ToTopic:
					dest = p.TargetTopic
				}
				q := fmt.Sprintf("Redrive the dead letters of %s (%s; %d to read after the checkpoint) to %s?", p.Topic, filter, backlog, dest)
				if err := a.confirm(q); err != nil {
					return err
				}
			}
			what, moved := "redrive", "moved"
			if dryRun {
				what, moved = "redrive (dry run)", "would move"
			}
			bar := newProgress(a.stderr, what, backlog)
			p.OnProgress = func(pr dlq.RedriveProgress) {
				bar.update(pr.Scanned, pr.Total, fmt.Sprintf("read, %d %s, %d skipped", pr.Moved, moved, pr.Skipped))
			}
			res, err := c.Redrive(ctx, p)
			bar.finish()
			if res != nil {
				if perr := a.printRedrive(res); perr != nil && err == nil {
					err = perr
				}
			}
			if err != nil {
				return err
			}
			if res.Skipped > 0 && !res.DryRun {
				return withCode(exitSkipped, fmt.Errorf("%d messages skipped", res.Skipped))
			}
			return nil
		},
	}
	ff.register(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&to, "to", "original", `where to send them: "original", "first-tier", or a topic name`)
	f.Float64Var(&perSecond, "rate", 0, "move at most this many messages per second (0: as fast as the broker takes them)")
	f.Int64Var(&maxCount, "max", 0, "stop after moving this many (0: all); the next run goes on from there")
	f.IntVar(&maxRedrives, "max-redrives", dlq.DefaultMaxRedrives, "skip messages redriven this many times already")
	f.StringVar(&name, "name", "", "checkpoint name; a new name starts from the beginning (default: from --to and the filters)")
	f.BoolVar(&dryRun, "dry-run", false, "print what would move, and change nothing")
	f.BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

func (a *app) printRedrive(res *dlq.RedriveResult) error {
	if a.json {
		return printJSON(a.stdout, res)
	}
	w := a.stdout
	verb := "Moved"
	if res.DryRun {
		verb = "Would move"
	}
	fmt.Fprintf(w, "%s %d of %d selected messages (%d read; checkpoint %q", verb, res.Moved, res.Selected, res.Scanned, res.Name)
	if res.Resumed {
		fmt.Fprint(w, ", resumed")
	}
	if res.Interrupted {
		fmt.Fprint(w, ", stopped at --max: run again for the rest")
	}
	fmt.Fprintln(w, ").")
	if len(res.Targets) > 0 {
		t := newTable(w, "COUNT", "TO")
		for _, topic := range slices.Sorted(maps.Keys(res.Targets)) {
			t.row(itoa(res.Targets[topic]), topic)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if res.Skipped > 0 {
		fmt.Fprintf(w, "\nSkipped %d:\n", res.Skipped)
		t := newTable(w, "COUNT", "WHY")
		for _, why := range slices.Sorted(maps.Keys(res.SkippedBy)) {
			t.row(itoa(res.SkippedBy[why]), why)
		}
		if err := t.flush(); err != nil {
			return err
		}
		t = newTable(w, "ID", "UUID", "WHY")
		for i, s := range res.SkippedExamples {
			if i == 10 {
				t.row("…", fmt.Sprintf("(%d more)", res.Skipped-10), "")
				break
			}
			t.row(s.ID, orDash(s.UUID), s.Why)
		}
		fmt.Fprintln(w)
		if err := t.flush(); err != nil {
			return err
		}
	}
	if res.DryRun && len(res.Reasons) > 0 {
		fmt.Fprintln(w)
		t := newTable(w, "COUNT", "REASON")
		for i, r := range res.Reasons {
			if i == 20 {
				t.row("…", fmt.Sprintf("(%d more reasons)", len(res.Reasons)-20))
				break
			}
			t.row(itoa(r.Count), orDash(r.Value))
		}
		return t.flush()
	}
	return nil
}

func (a *app) purgeCommand() *cobra.Command {
	var ff filterFlags
	var before string
	var offsets []string
	var dryRun, yes bool
	cmd := &cobra.Command{
		Use:   "purge TOPIC",
		Short: "Delete dead letters",
		Long: `Delete dead letters of TOPIC for good. It takes what is stored when it starts.

Redis deletes the entries the filters select (or every entry, without a filter).

Kafka can only delete the start of a partition (DeleteRecords): purge
everything (no filter), everything stored before a time (--before, the same
as --until), or everything before an offset per partition (--before-offset
PARTITION:OFFSET, repeated). Other filters are refused (exit code 2):
redrive or export the messages to keep first.

--dry-run prints how many would go. Otherwise it asks for confirmation on
stdin unless --yes.`,
		Example: `  retryctl dlq purge orders.billing.dlq --before 24h --dry-run
  retryctl dlq purge orders.billing.dlq --before 2026-01-02T00:00:00Z --yes
  retryctl dlq purge orders.billing.dlq --before-offset 0:1200 --before-offset 1:1187
  retryctl dlq purge orders.billing.dlq --reason 'card declined'   # Redis only`,
		Args: args(1, "one TOPIC"),
		RunE: func(cmd *cobra.Command, argv []string) error {
			ctx := cmd.Context()
			if before != "" {
				if ff.until != "" {
					return withCode(exitUsage, errors.New("--before and --until are the same; give one"))
				}
				ff.until = before
			}
			filter, err := ff.filter(time.Now())
			if err != nil {
				return err
			}
			p := dlq.PurgeParams{Topic: argv[0], Filter: filter, DryRun: true}
			if len(offsets) > 0 {
				p.BeforeOffsets = map[int32]int64{}
				for _, o := range offsets {
					ps, os, ok := strings.Cut(o, ":")
					part, err1 := strconv.ParseInt(ps, 10, 32)
					off, err2 := strconv.ParseInt(os, 10, 64)
					if !ok || err1 != nil || err2 != nil || part < 0 || off < 0 {
						return withCode(exitUsage, fmt.Errorf("--before-offset %q: use PARTITION:OFFSET, like 0:1200", o))
					}
					p.BeforeOffsets[int32(part)] = off
				}
			}
			if err := p.Validate(); err != nil {
				return withCode(exitUsage, err)
			}
			c, err := a.open(ctx)
			if err != nil {
				return err
			}
			// Count first: the answer to a dry run, and what the
			// confirmation asks about.
			count, err := c.Purge(ctx, p)
			if err != nil {
				return err
			}
			if dryRun || count.Deleted == 0 {
				return a.printPurge(count, p.Topic)
			}
			if !yes {
				if err := a.confirm(fmt.Sprintf("Delete %d messages of %s (%s) for good?", count.Deleted, p.Topic, selection(p))); err != nil {
					return err
				}
			}
			p.DryRun = false
			bar := newProgress(a.stderr, "purge", count.Deleted)
			p.OnProgress = func(n int64) { bar.update(n, count.Deleted, "deleted") }
			res, err := c.Purge(ctx, p)
			bar.finish()
			if err != nil {
				return err
			}
			return a.printPurge(res, p.Topic)
		},
	}
	ff.register(cmd.Flags())
	cmd.Flags().StringVar(&before, "before", "", "delete what was stored before this time (same as --until)")
	cmd.Flags().StringArrayVar(&offsets, "before-offset", nil, "Kafka: delete partition PARTITION's records before OFFSET (PARTITION:OFFSET; repeat per partition)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print how many would be deleted, and delete nothing")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

func selection(p dlq.PurgeParams) string {
	if len(p.BeforeOffsets) == 0 {
		return p.Filter.String()
	}
	var parts []string
	for _, part := range slices.Sorted(maps.Keys(p.BeforeOffsets)) {
		parts = append(parts, fmt.Sprintf("partition %d before offset %d", part, p.BeforeOffsets[part]))
	}
	return strings.Join(parts, ", ")
}

func (a *app) printPurge(res *dlq.PurgeResult, topic string) error {
	if a.json {
		return printJSON(a.stdout, res)
	}
	if res.DryRun {
		_, err := fmt.Fprintf(a.stdout, "Would delete %d messages of %s.\n", res.Deleted, topic)
		return err
	}
	_, err := fmt.Fprintf(a.stdout, "Deleted %d messages of %s.\n", res.Deleted, topic)
	return err
}

// confirm asks q on stderr and reads the answer from stdin: "y" or "yes"
// goes on; anything else, or no answer, stops with exitNotConfirmed.
func (a *app) confirm(q string) error {
	fmt.Fprintf(a.stderr, "%s [y/N] ", q)
	line, err := bufio.NewReader(a.stdin).ReadString('\n')
	answer := strings.ToLower(strings.TrimSpace(line))
	if answer == "y" || answer == "yes" {
		return nil
	}
	if err != nil && answer == "" {
		fmt.Fprintln(a.stderr)
		return withCode(exitNotConfirmed, errors.New("not confirmed: no answer on stdin (pass --yes to run without asking)"))
	}
	return withCode(exitNotConfirmed, errors.New("not confirmed"))
}
