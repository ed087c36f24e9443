// Command benchtable reads the output of the retry-kafka benchmarks
// (go test -bench . ./bench/) on stdin and prints every figure as Markdown
// tables, one per benchmark with a row per backend, followed by the
// targets and whether this run met them. scripts/bench.sh runs both.
//
// Lines it does not recognise are ignored, except failures, which it
// repeats at the end (and then exits with status 1).
package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// result is one benchmark line: Benchmark{Group}/{Row}-{procs}.
type result struct {
	group, row string
	metrics    map[string]float64
	units      []string // in the order printed
}

var line = regexp.MustCompile(`^Benchmark([^/\s]+)(?:/(\S+?))?(?:-\d+)?\s+\d+\s+(.+)$`)

// figures orders and titles the known benchmarks and their columns.
var figures = []struct {
	group, title string
	columns      []string
}{
	{"Throughput", "1-2. Throughput: happy path and retry path (msg/s; ratios against plain Watermill)",
		[]string{"msgs", "plain-msg/s", "happy-msg/s", "happy-ratio", "happy-cpu-ratio", "retry-msgs", "retry-msg/s", "retry-ratio", "retry-main-msg/s"}},
	{"DelayPrecision", "3. Delay precision: lateness of tier deliveries over their due time (1,000 messages, 200ms tier)",
		[]string{"msgs", "p50-late-ms", "p99-late-ms", "max-late-ms", "early", "main-msg/s", "tier-msg/s", "trickle-p50-ms", "trickle-p99-ms"}},
	{"HeadOfLine", "4. Head-of-line: main-topic throughput with 10% failing (30s tier) vs none; Watermill's Retry (3s back-off) vs plain",
		[]string{"msgs", "nofail-msg/s", "fail10-msg/s", "hol-ratio", "hol-1ms-ratio", "pub-us", "plain-msg/s", "wmretry-msg/s", "wmretry-ratio"}},
	{"Memory", "5. Memory with messages waiting in a 1h tier, above the idle process (MiB)",
		[]string{"idle-heap-MiB", "d-heap-10k-MiB", "d-heap-100k-MiB", "idle-rss-MiB", "d-rss-10k-MiB", "d-rss-100k-MiB", "d-goroutines-100k", "broker-100k-MiB"}},
	{"MemoryLarge", "5b. Kafka: memory with 1,000 records of 100 KiB waiting in a 1h tier, above the idle process (MiB)",
		[]string{"record-KiB", "waiting", "d-heap-MiB", "d-rss-MiB"}},
	{"Rebalance", "6. Kafka rebalance: a second consumer joins (seconds until the group is Stable with 2 members)",
		[]string{"tiered-s", "plain-held-s", "plain-idle-s", "hold-s"}},
	{"DLQ", "7. Dead letters: unthrottled redrive vs plain batch publish (msg/s), and peak live heap of each operation at 10k and 1M dead letters (MiB above the start)",
		[]string{"msgs", "plain-msg/s", "redrive-msg/s", "redrive-ratio", "list-10k-MiB", "list-1M-MiB", "stats-10k-MiB", "stats-1M-MiB", "export-10k-MiB", "export-1M-MiB", "redrive-10k-MiB", "redrive-1M-MiB"}},
	{"Observability", "8. Metrics and tracing on vs off: happy-path CPU per message (ratios off / on; 1% of traces sampled, and all)",
		[]string{"msgs", "off-cpu-us", "metrics-cpu-ratio", "traced-cpu-ratio", "sampled-cpu-ratio", "sampled-cpu-us"}},
	{"Window", "9. Kafka: the partition window (kafka.Config.PartitionWindow): main-topic throughput against plain watermill-kafka, 10% failing into a 30s tier (fail10) and every message failing once into a 1ms tier (retry)",
		[]string{"plain-msg/s", "w16-fail10-ratio", "w16-retry-ratio", "w64-fail10-ratio", "w64-retry-ratio", "w256-fail10-ratio", "w256-retry-ratio", "w1024-fail10-ratio", "w1024-retry-ratio", "default-window"}},
	{"Clients", "10. Kafka: broker connections and goroutines per handler with two tiers, against plain watermill-kafka (a subscriber per subscription, one publisher)",
		[]string{"tiered-conns/handler", "plain-conns/handler", "tiered-goroutines/handler", "plain-goroutines/handler"}},
	{"Middleware", "Middleware CPU cost per call, no broker",
		[]string{"ns/call", "allocs/call"}},
}

func main() {
	results, failures, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	printTables(os.Stdout, results)
	printTargets(os.Stdout, results)
	if len(failures) > 0 {
		fmt.Println("\n## Failures")
		for _, f := range failures {
			fmt.Println("    " + f)
		}
		os.Exit(1)
	}
}

func parse(r io.Reader) ([]result, []string, error) {
	var results []result
	var failures []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		text := sc.Text()
		if strings.HasPrefix(text, "--- FAIL") || strings.HasPrefix(text, "FAIL") || strings.HasPrefix(text, "panic:") {
			failures = append(failures, text)
			continue
		}
		m := line.FindStringSubmatch(text)
		if m == nil {
			continue
		}
		res := result{group: m[1], row: m[2], metrics: map[string]float64{}}
		fields := strings.Fields(m[3])
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			res.metrics[fields[i+1]] = v
			res.units = append(res.units, fields[i+1])
		}
		results = append(results, res)
	}
	return results, failures, sc.Err()
}

func printTables(w io.Writer, results []result) {
	seen := map[string]bool{}
	for _, f := range figures {
		seen[f.group] = true
		printTable(w, f.title, f.columns, rowsOf(results, f.group))
	}
	for _, r := range results { // benchmarks this command does not know
		if !seen[r.group] {
			seen[r.group] = true
			printTable(w, r.group, r.units, rowsOf(results, r.group))
		}
	}
}

func rowsOf(results []result, group string) []result {
	var rows []result
	for _, r := range results {
		if r.group == group {
			rows = append(rows, r)
		}
	}
	return rows
}

func printTable(w io.Writer, title string, columns []string, rows []result) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n### %s\n\n", title)
	fmt.Fprintf(w, "| backend | %s |\n", strings.Join(columns, " | "))
	fmt.Fprintf(w, "|---|%s\n", strings.Repeat("---:|", len(columns)))
	for _, r := range rows {
		cells := make([]string, len(columns))
		for i, c := range columns {
			if v, ok := r.metrics[c]; ok {
				cells[i] = format(v)
			} else {
				cells[i] = "-"
			}
		}
		fmt.Fprintf(w, "| %s | %s |\n", orDash(r.row), strings.Join(cells, " | "))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// format prints 3 significant digits, without exponents.
func format(v float64) string {
	switch a := math.Abs(v); {
	case v == math.Trunc(v) && a < 1e9:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 0.01:
		return strconv.FormatFloat(v, 'f', 3, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

// target is one goal checked on every row of a group that has its
// metrics. check returns the value, the verdict, and false when the row
// lacks the metrics.
type target struct {
	group, what string
	check       func(m map[string]float64) (value, verdict string, ok bool)
	backend     string // only this backend's row; "" for every row
}

func verdict(met bool) string {
	if met {
		return "yes"
	}
	return "**no**"
}

func atLeast(metric string, goal float64) func(map[string]float64) (string, string, bool) {
	return func(m map[string]float64) (string, string, bool) {
		v, ok := m[metric]
		return format(v), verdict(v >= goal), ok
	}
}

func below(metric string, goal float64) func(map[string]float64) (string, string, bool) {
	return func(m map[string]float64) (string, string, bool) {
		v, ok := m[metric]
		return format(v), verdict(v < goal), ok
	}
}

var targets = []target{
	{"Throughput", "happy-ratio >= 0.95", atLeast("happy-ratio", 0.95), ""},
	{"Throughput", "happy-cpu-ratio >= 0.95", atLeast("happy-cpu-ratio", 0.95), ""},
	{"Throughput", "retry-ratio: how close to the 0.5 limit", func(m map[string]float64) (string, string, bool) {
		v, ok := m["retry-ratio"]
		return format(v), fmt.Sprintf("%.0f%% of the limit", v/0.5*100), ok
	}, ""},
	{"DelayPrecision", "early deliveries = 0", func(m map[string]float64) (string, string, bool) {
		v, ok := m["early"]
		return format(v), verdict(v == 0), ok
	}, ""},
	{"HeadOfLine", "hol-ratio >= 0.9 (no-op handler)", atLeast("hol-ratio", 0.9), ""},
	{"HeadOfLine", "hol-1ms-ratio >= 0.9 (1ms handler)", atLeast("hol-1ms-ratio", 0.9), ""},
	{"Memory", "d-heap-100k-MiB < 64", below("d-heap-100k-MiB", 64), ""},
	{"Memory", "d-rss-100k-MiB < 64", below("d-rss-100k-MiB", 64), ""},
	{"Memory", "flat: d-rss-100k - d-rss-10k < 8 MiB", func(m map[string]float64) (string, string, bool) {
		a, ok1 := m["d-rss-100k-MiB"]
		b, ok2 := m["d-rss-10k-MiB"]
		return format(a - b), verdict(a-b < 8), ok1 && ok2
	}, ""},
	{"Rebalance", "tiered-s < 1 (plain-held-s about hold-s)", below("tiered-s", 1), ""},
	// Issue 11's targets for the pipelined Kafka consumer.
	{"Throughput", "happy-cpu-ratio >= 0.97", atLeast("happy-cpu-ratio", 0.97), "kafka"},
	{"Throughput", "retry-ratio >= 0.4 (limit 0.5)", atLeast("retry-ratio", 0.4), "kafka"},
	{"DelayPrecision", "p99-late-ms <= 20 (burst of 1,000 due)", func(m map[string]float64) (string, string, bool) {
		v, ok := m["p99-late-ms"]
		return format(v), verdict(v <= 20), ok
	}, "kafka"},
	{"MemoryLarge", "d-rss-MiB < 16 (bounded prefetch)", below("d-rss-MiB", 16), "kafka"},
	{"DLQ", "redrive-ratio >= 0.5", atLeast("redrive-ratio", 0.5), ""},
	flatDLQ("list"), flatDLQ("stats"), flatDLQ("export"), flatDLQ("redrive"),
	{"Observability", "metrics-cpu-ratio >= 0.95", atLeast("metrics-cpu-ratio", 0.95), ""},
	{"Observability", "traced-cpu-ratio >= 0.95 (metrics and tracing, 1% sampled)", atLeast("traced-cpu-ratio", 0.95), ""},
}

// flatDLQ checks that an operation's peak heap at 1M dead letters is
// within 32 MiB of its peak at 10k: a hundred times the messages (some
// 400 MiB of them) must not show.
func flatDLQ(op string) target {
	return target{"DLQ", "flat: " + op + "-1M - " + op + "-10k < 32 MiB", func(m map[string]float64) (string, string, bool) {
		a, ok1 := m[op+"-1M-MiB"]
		b, ok2 := m[op+"-10k-MiB"]
		return format(a - b), verdict(a-b < 32), ok1 && ok2
	}, ""}
}

func printTargets(w io.Writer, results []result) {
	fmt.Fprintf(w, "\n### Targets\n\n| figure | target | backend | value | met |\n|---|---|---|---:|---|\n")
	for _, t := range targets {
		for _, r := range rowsOf(results, t.group) {
			if t.backend != "" && r.row != t.backend {
				continue
			}
			value, verdict, ok := t.check(r.metrics)
			if ok {
				fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", t.group, t.what, orDash(r.row), value, verdict)
			}
		}
	}
}
