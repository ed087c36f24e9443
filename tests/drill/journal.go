package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// handling is one completed run of the handler on one message, as the
// consumer recorded it before returning (so before the message was acked or
// its copy published).
type handling struct {
	UUID    string
	Attempt int // 1 on the main topic; -1 when the retry metadata was unreadable
	Tier    int // 0 on the main topic, else from 1 as Topics.Tier gives it
	Step    step
	Start   time.Time // the handler got the message
	End     time.Time // the handler decided (before the record was synced)
	Due     time.Time // due time the message carried; zero on the main topic
	PID     int
}

// journal is the consumer's append-only record of handlings: one file per
// process (so that a record torn by a kill never runs into the next
// process's), one line per handling, synced to disk before the handler
// returns. A kill -9 can therefore not hide a handling whose result the
// broker saw.
type journal struct {
	mu sync.Mutex
	f  *os.File
}

// journalName is the file a consumer process writes in dir.
func journalName(dir string, pid int) string {
	return filepath.Join(dir, fmt.Sprintf("handled.%d.log", pid))
}

func openJournal(dir string) (*journal, error) {
	f, err := os.OpenFile(journalName(dir, os.Getpid()), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &journal{f: f}, nil
}

// write appends h and syncs it to disk.
func (j *journal) write(h handling) error {
	due := int64(0)
	if !h.Due.IsZero() {
		due = h.Due.UnixMilli()
	}
	line := fmt.Sprintf("h %s %d %d %s %d %d %d %d\n",
		h.UUID, h.Attempt, h.Tier, h.Step, h.Start.UnixNano(), h.End.UnixNano(), due, h.PID)
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, err := j.f.WriteString(line); err != nil {
		return err
	}
	return j.f.Sync()
}

func (j *journal) close() error { return j.f.Close() }

func parseHandling(line string) (handling, error) {
	f := strings.Fields(line)
	if len(f) != 9 || f[0] != "h" {
		return handling{}, fmt.Errorf("not a handling: %q", line)
	}
	var h handling
	var errs []error
	num := func(s string) int64 {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			errs = append(errs, err)
		}
		return n
	}
	h.UUID = f[1]
	h.Attempt = int(num(f[2]))
	h.Tier = int(num(f[3]))
	st, ok := parseStep(f[4])
	if !ok {
		return handling{}, fmt.Errorf("unknown step %q in %q", f[4], line)
	}
	h.Step = st
	h.Start = time.Unix(0, num(f[5]))
	h.End = time.Unix(0, num(f[6]))
	if due := num(f[7]); due != 0 {
		h.Due = time.UnixMilli(due)
	}
	h.PID = int(num(f[8]))
	if len(errs) > 0 {
		return handling{}, fmt.Errorf("bad number in %q: %v", line, errs[0])
	}
	return h, nil
}

// journalReader follows every journal in a directory as consumers append
// to them. Not safe for concurrent use.
type journalReader struct {
	dir     string
	offsets map[string]int64
	partial map[string][]byte // bytes after a file's last newline
}

func newJournalReader(dir string) *journalReader {
	return &journalReader{dir: dir, offsets: map[string]int64{}, partial: map[string][]byte{}}
}

// read returns the handlings appended since the last call. A line without
// its newline yet is kept for the next call: once its writer is dead (a
// kill in the middle of a write, which never returned), it is never
// completed and never counted.
func (r *journalReader) read() ([]handling, error) {
	names, err := filepath.Glob(filepath.Join(r.dir, "handled.*.log"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var out []handling
	for _, name := range names {
		hs, err := r.readFile(name)
		if err != nil {
			return out, err
		}
		out = append(out, hs...)
	}
	return out, nil
}

func (r *journalReader) readFile(name string) ([]handling, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(r.offsets[name], io.SeekStart); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	r.offsets[name] += int64(len(data))
	data = append(r.partial[name], data...)
	end := bytes.LastIndexByte(data, '\n')
	r.partial[name] = append([]byte(nil), data[end+1:]...)
	var out []handling
	for _, line := range strings.Split(string(data[:end+1]), "\n") {
		if line == "" {
			continue
		}
		h, err := parseHandling(line)
		if err != nil {
			return out, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, h)
	}
	return out, nil
}

// torn returns the journals that end in an incomplete line: records whose
// writer was killed mid-write.
func (r *journalReader) torn() int {
	n := 0
	for _, p := range r.partial {
		if len(p) > 0 {
			n++
		}
	}
	return n
}
