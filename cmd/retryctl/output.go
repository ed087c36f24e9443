package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/retry-kafka/retry-kafka/dlq"
)

// filterFlags are the flags that select messages, shared by ls, stats,
// export, redrive and purge.
type filterFlags struct {
	since, until, reason, handler, originalTopic, key, uuid string
}

func (f *filterFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.since, "since", "", "only messages stored at or after this time: RFC 3339 (2026-01-02T15:04:05Z), a date (2026-01-02), or a duration ago (90m, 2h)")
	fs.StringVar(&f.until, "until", "", "only messages stored before this time (same forms as --since)")
	fs.StringVar(&f.reason, "reason", "", "only messages whose reason matches this regular expression (RE2)")
	fs.StringVar(&f.handler, "handler", "", "only messages of this handler")
	fs.StringVar(&f.originalTopic, "original-topic", "", "only messages first consumed from this topic")
	fs.StringVar(&f.key, "key", "", "only Kafka records with this key")
	fs.StringVar(&f.uuid, "uuid", "", "only the message with this UUID")
}

func (f *filterFlags) filter(now time.Time) (dlq.Filter, error) {
	since, err := parseTime("--since", f.since, now)
	if err != nil {
		return dlq.Filter{}, err
	}
	until, err := parseTime("--until", f.until, now)
	if err != nil {
		return dlq.Filter{}, err
	}
	filter := dlq.Filter{From: since, To: until, Reason: f.reason, Handler: f.handler, OriginalTopic: f.originalTopic, Key: f.key, UUID: f.uuid}
	if err := filter.Validate(); err != nil {
		return dlq.Filter{}, err
	}
	return filter, nil
}

// parseTime reads a time flag: RFC 3339, a date, or a duration ago.
func parseTime(flag, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation(time.DateOnly, v, time.Local); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, withCode(exitUsage, fmt.Errorf("%s %q is not a time: use RFC 3339 (2026-01-02T15:04:05Z), a date (2026-01-02) or a duration ago (90m)", flag, v))
}

// table writes aligned columns. The header goes out with the first row,
// so a command that fails before its first row prints no empty table, and
// rows are flushed every tableChunk so that a long listing does not pile
// up in memory (columns align within each chunk).
type table struct {
	w      *tabwriter.Writer
	header []string
	rows   int
}

const tableChunk = 500

func newTable(w io.Writer, header ...string) *table {
	return &table{w: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0), header: header}
}

func (t *table) row(cells ...string) {
	if t.header != nil {
		t.write(t.header)
		t.header = nil
	}
	t.write(cells)
	if t.rows++; t.rows%tableChunk == 0 {
		_ = t.w.Flush()
	}
}

func (t *table) write(cells []string) {
	clean := make([]string, len(cells))
	for i, c := range cells {
		clean[i] = strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(c)
	}
	fmt.Fprintln(t.w, strings.Join(clean, "\t"))
}

func (t *table) flush() error { return t.w.Flush() }

// printJSON writes v as one indented JSON document.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// ago writes how long before now t was: "3m12s ago"; "-" for zero.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return round(now.Sub(t)).String() + " ago"
}

// until writes how long after now t is: "in 8s", "overdue 2s"; "-" for
// zero.
func until(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	if d := t.Sub(now); d >= 0 {
		return "in " + round(d).String()
	} else {
		return "overdue " + round(-d).String()
	}
}

func round(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// clip shortens s to n runes for a table cell.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// progress shows how far a long command got: a bar with count, rate and
// ETA when stderr is a terminal, else a plain line at most every second.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	bar   *progressbar.ProgressBar
	what  string
	last  time.Time
	plain bool // plain lines (not a terminal); neither: nothing to show
}

func newProgress(w io.Writer, what string, total int64) *progress {
	p := &progress{w: w, what: what}
	if total <= 0 {
		return p // nothing to show progress of
	}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(what),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("msg"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
			progressbar.OptionSetRenderBlankState(true), // the clock (rate, ETA) starts now
		)
		return p
	}
	p.plain = true
	return p
}

// update reports done of total, with detail for the plain lines.
func (p *progress) update(done, total int64, detail string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.plain && p.bar == nil {
		return
	}
	if p.bar != nil {
		if total > 0 && p.bar.GetMax64() != total {
			p.bar.ChangeMax64(total)
		}
		_ = p.bar.Set64(done)
		return
	}
	if time.Since(p.last) < time.Second {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(p.w, "%s: %d/%d %s\n", p.what, done, total, detail)
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}
