package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// report prints the result as Markdown on stdout (the form RELIABILITY.md
// records) and, with -json, writes it as JSON.
func (d *drill) report(r result) {
	c := d.c
	verdict := "PASS"
	if !r.ok() {
		verdict = "FAIL"
	}
	perKill, perRestart := "-", "-"
	if r.Kills > 0 {
		perKill = fmt.Sprintf("%.2f (max %d)", float64(r.DupAfterKill)/float64(r.Kills), r.MaxDupPerKill)
	}
	if r.Restarts > 0 {
		perRestart = fmt.Sprintf("%.2f (max %d)", float64(r.DupAfterRestart)/float64(r.Restarts), r.MaxDupPerRestart)
	}
	drain := r.DrainAfterLast.Round(100 * time.Millisecond).String()
	if r.NotDrained {
		drain = fmt.Sprintf("NOT DRAINED within %v", c.DrainTimeout)
	} else if r.Kills+r.Restarts == 0 {
		drain = "- (no fault)"
	}

	var b strings.Builder
	fmt.Fprintf(&b, "### Drill %s: %s\n\n", d.runID, verdict)
	fmt.Fprintf(&b, "- date: %s; commit: %s; %s; %s, %d CPUs\n", time.Now().UTC().Format(time.RFC3339), d.commit, runtime.Version(), cpuModel(), runtime.NumCPU())
	fmt.Fprintf(&b, "- broker: %s\n", d.broker.Describe())
	fmt.Fprintf(&b, "- %d messages over %v, %d consumer process(es), policy %s x%d attempts, seed %d\n",
		c.Messages, c.Window, c.Consumers, formatDelays(c.Delays), c.MaxAttempts, c.Seed)
	fmt.Fprintf(&b, "- reproduce: `go run ./tests/drill %s`\n\n", strings.Join(d.reproduce(), " "))
	fmt.Fprintf(&b, "| figure | value |\n|---|---|\n")
	row := func(k string, v any) { fmt.Fprintf(&b, "| %s | %v |\n", k, v) }
	row("lost", r.Lost)
	row("wrongly dead-lettered", r.WronglyDead)
	row("succeeded although planned to dead-letter", r.UnexpectedOK)
	row("early (before the due time carried)", r.EarlyStamped)
	row("early (sooner than the tier delay after the failure)", r.EarlyAfterFail)
	row("tier attempts with no failure before them", r.Orphans)
	row("unreadable retry metadata", r.BadInfo)
	row("expected outcomes (succeed / dead-letter)", fmt.Sprintf("%d / %d", r.ExpectedOK, r.ExpectedDead))
	row("handlings", r.Handlings)
	row("duplicate handlings", r.DupHandlings)
	row("... put down to a consumer kill / a broker restart / no fault", fmt.Sprintf("%d / %d / %d", r.DupAfterKill, r.DupAfterRestart, r.DupNoFault))
	row("... of which second copies of a duplicate failure", r.DupCascaded)
	row("duplicate successes", r.DupSuccesses)
	row("duplicate dead-letter records", r.DupDeadLetters)
	row("consumer kills (duplicates per kill)", fmt.Sprintf("%d (%s)", r.Kills, perKill))
	row("broker restarts (duplicates per restart)", fmt.Sprintf("%d (%s)", r.Restarts, perRestart))
	row("republished by the producer (left out of duplicates; their extra handlings)", fmt.Sprintf("%d (%d)", r.Republished, r.ProducerDups))
	row("drained after the last fault", drain)
	row("tier lateness p50 / p99 / max", fmt.Sprintf("%v / %v / %v", r.LatenessP50.Round(time.Millisecond), r.LatenessP99.Round(time.Millisecond), r.LatenessMax.Round(time.Millisecond)))
	row("torn journal records (killed mid-write, not counted)", r.Torn)
	for what, ids := range r.Examples {
		fmt.Fprintf(&b, "\nexamples of %s: %s", what, strings.Join(ids, ", "))
	}
	fmt.Fprintln(&b)
	d.mu.Lock()
	for i, f := range d.faults {
		dups := 0
		if i < len(r.DupPerFault) {
			dups = r.DupPerFault[i]
		}
		fmt.Fprintf(&b, "\n- +%v %s: %s; %d duplicates", f.At.Sub(d.started).Round(100*time.Millisecond), f.Kind, f.Detail, dups)
	}
	d.mu.Unlock()
	fmt.Fprintln(&b)
	fmt.Fprint(d.out, b.String())

	if c.JSON != "" {
		out := struct {
			RunID  string   `json:"run_id"`
			Broker string   `json:"broker"`
			Args   []string `json:"args"`
			Commit string   `json:"commit"`
			result
		}{d.runID, d.broker.Describe(), d.reproduce(), d.commit, r}
		data, _ := json.MarshalIndent(out, "", "  ")
		if err := os.WriteFile(c.JSON, append(data, '\n'), 0o644); err != nil {
			d.logf("write %s: %v", c.JSON, err)
		}
	}
}

// reproduce gives the flags that rerun this drill with the same seed.
func (d *drill) reproduce() []string {
	c := d.c
	args := []string{
		"-broker", c.Broker, "-messages", fmt.Sprint(c.Messages), "-kills", fmt.Sprint(c.Kills),
		"-broker-restarts", fmt.Sprint(c.Restarts), "-window", c.Window.String(), "-seed", fmt.Sprint(c.Seed),
	}
	if c.Broker == "kafka" && c.KafkaNodes != 1 {
		args = append(args, "-kafka-nodes", fmt.Sprint(c.KafkaNodes))
	}
	if c.Consumers != 1 {
		args = append(args, "-consumers", fmt.Sprint(c.Consumers))
	}
	if c.Params != "" {
		args = append(args, "-params", c.Params)
	}
	return args
}

func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	s := strings.TrimSpace(string(out))
	if exec.Command("git", "diff", "--quiet", "HEAD", "--").Run() != nil {
		s += " (plus uncommitted changes)"
	}
	return s
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}
