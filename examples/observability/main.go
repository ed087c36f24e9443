// Observability shows what an operator sees of a Watermill router with
// tiered retries: Prometheus metrics of the retries beside Watermill's own
// (one registry, served on /metrics), and OpenTelemetry traces that follow a
// message from its producer through every tier to the dead-letter topic.
// By default it needs no broker: it starts an embedded Kafka-protocol broker
// in this process, behind the real watermill-kafka client.
//
// A producer publishes orders at a steady rate to a "billing" handler
// whose tiers wait 1s and 3s. Most orders are charged at once; some fail
// once or twice and are charged from a tier; some fail every time and end
// in the dead-letter topic after their last tier; some are declined, a
// permanent error that goes there at once. While this runs, the program
// scrapes its own /metrics every few seconds and prints the retry series
// that are not zero. At the end it prints the trace of one order that was
// dead-lettered, span by span, and exits 0.
//
// grafana-dashboard.json is a Grafana dashboard of these metrics: retry
// rate per tier, successes by tier, dead letters by reason, the depth of
// the dead-letter topic and the age of its oldest message (read through
// the dlq API at scrape time), lateness p50/p99, held messages and
// publish failures.
//
//	go run ./examples/observability                                  # embedded broker
//	go run ./examples/observability -broker redis://127.0.0.1:6379/0 # Redis Streams
//	go run ./examples/observability -listen 127.0.0.1:9464 -duration 5m
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmetrics "github.com/ThreeDotsLabs/watermill/components/metrics"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/retry-kafka/retry-kafka/dlq"
	"github.com/retry-kafka/retry-kafka/pubsub/embedded"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// errDeclined is a business error that no retry can fix.
var errDeclined = errors.New("card declined")

// options configure one run.
type options struct {
	broker   string        // backend URL
	listen   string        // address of the /metrics server
	duration time.Duration // how long orders are produced
	rate     int           // orders per second
	delays   []time.Duration
	every    time.Duration // between two printed scrapes
	out      io.Writer
	verbose  bool
	// registry receives every metric; a fresh one when nil.
	registry *prometheus.Registry
}

func main() {
	o := options{out: os.Stdout, delays: []time.Duration{time.Second, 3 * time.Second}}
	flag.StringVar(&o.broker, "broker", envOr("BROKER_URL", "kafka://embedded"), "backend URL: kafka://embedded, kafka://host:9092, redis://host:6379/0 or mem://")
	flag.StringVar(&o.listen, "listen", "127.0.0.1:0", "address to serve /metrics on (port 0: a free one)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long to produce orders")
	flag.IntVar(&o.rate, "rate", 20, "orders per second")
	flag.DurationVar(&o.every, "every", 3*time.Second, "how often to print a scrape")
	flag.BoolVar(&o.verbose, "v", false, "print the library's and Watermill's logs")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "observability:", err)
		os.Exit(1)
	}
}

// outcome is what the handler does with order n: every tenth fails
// always, the one after is declined, two in ten fail once, one fails
// twice; the rest are charged at once.
func outcome(n int) (failures int, declined bool) {
	switch n % 10 {
	case 0:
		return -1, false
	case 1:
		return 0, true
	case 2, 3:
		return 1, false
	case 4:
		return 2, false
	}
	return 0, false
}

func run(ctx context.Context, o options) error {
	var logger watermill.LoggerAdapter = watermill.NopLogger{}
	if o.verbose {
		logger = watermill.NewStdLogger(false, false)
	}
	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Fprintf(o.out, "%6.2fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	brokerURL := o.broker
	if strings.HasPrefix(brokerURL, "kafka://") && !strings.Contains(brokerURL, "?") && brokerURL != "kafka://embedded" {
		brokerURL += "?create_topics=true" // a fresh topic per run
	}
	backend, err := embedded.Open(ctx, brokerURL, logger) // kafka://embedded, or any URL pubsub.Open takes
	if err != nil {
		return err
	}
	defer backend.Close()

	// One registry for Watermill's metrics and ours; one tracer provider
	// (the SDK, here with an in-memory exporter to print a trace at the
	// end; an application would export to its collector).
	reg := o.registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	defer func() { _ = tp.Shutdown(context.Background()) }()

	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, logger)
	if err != nil {
		return err
	}
	r.AddMiddleware(wmiddleware.Recoverer)
	wmetrics.NewPrometheusMetricsBuilder(reg, "", "").AddPrometheusRouterMetrics(r)

	config := router.Config{
		Backend:        backend,
		Policy:         tiered.Policy{Delays: o.delays, MaxAttempts: len(o.delays) + 1},
		Registerer:     reg,
		TracerProvider: tp,
	}
	// The depth of the dead-letter topic, read through the dlq API at
	// each scrape (Kafka and Redis; mem:// cannot be inspected).
	client, err := dlq.New(dlq.Config{Backend: backend}, logger)
	switch {
	case err == nil:
		defer client.Close()
		config.DeadLetters = client
	case !errors.Is(err, dlq.ErrUnsupportedBackend):
		return err
	}
	retrying, err := router.New(config, logger)
	if err != nil {
		return err
	}

	topic := "observability.orders." + watermill.NewShortUUID()[:8]
	var mu sync.Mutex
	calls := map[string]int{}
	charged := map[string]bool{}
	dead := map[string]bool{}
	h, err := retrying.AddConsumerHandler(r, "billing", topic, func(msg *message.Message) error {
		mu.Lock()
		calls[msg.UUID]++
		n := calls[msg.UUID]
		mu.Unlock()
		var order int
		_, _ = fmt.Sscanf(string(msg.Payload), "order-%d", &order)
		failures, declined := outcome(order)
		switch {
		case declined:
			return tiered.Permanent(errDeclined)
		case failures < 0 || n <= failures:
			return errors.New("payment gateway timeout")
		}
		mu.Lock()
		charged[msg.UUID] = true
		mu.Unlock()
		return nil
	})
	if err != nil {
		return err
	}

	// Count what reaches the dead-letter topic, as an operator's consumer
	// would.
	dlqSub, err := backend.Subscriber(tiered.SubscribeParams{Group: "observability-dlq-reader", Topic: h.Topics.DLQ})
	if err != nil {
		return err
	}
	r.AddConsumerHandler("dlq-reader", h.Topics.DLQ, dlqSub, func(msg *message.Message) error {
		mu.Lock()
		dead[msg.UUID] = true
		mu.Unlock()
		return nil
	})

	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Close()
	metricsURL := "http://" + lis.Addr().String() + "/metrics"
	say("serving metrics on %s", metricsURL)

	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	select {
	case <-r.Running():
	case err := <-runErr:
		return err
	}
	defer func() { _ = r.Close() }()
	say("handler billing on %s: tiers %s, dead letters %s", topic, strings.Join(h.Topics.Tiers, ", "), h.Topics.DLQ)

	// Produce orders, each from within a producer span whose W3C trace
	// context the message carries.
	producer := tp.Tracer("observability-producer")
	produced := make(chan error, 1)
	var total int
	go func() {
		tick := time.NewTicker(time.Second / time.Duration(max(o.rate, 1)))
		defer tick.Stop()
		stop := time.After(o.duration)
		for {
			select {
			case <-tick.C:
			case <-stop:
				produced <- nil
				return
			case <-ctx.Done():
				produced <- ctx.Err()
				return
			}
			total++
			pctx, span := producer.Start(ctx, "send "+topic, trace.WithSpanKind(trace.SpanKindProducer))
			msg := message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf("order-%d", total)))
			propagation.TraceContext{}.Inject(pctx, propagation.MapCarrier(msg.Metadata))
			err := backend.Publisher().Publish(topic, msg)
			span.End()
			if err != nil {
				produced <- err
				return
			}
		}
	}()

	scrapes := time.NewTicker(o.every)
	defer scrapes.Stop()
	for done := false; !done; {
		select {
		case err := <-produced:
			if err != nil {
				return err
			}
			done = true
		case <-scrapes.C:
			if err := printScrape(o.out, metricsURL, say); err != nil {
				return err
			}
		case err := <-runErr:
			return fmt.Errorf("router stopped: %w", err)
		}
	}
	say("produced %d orders; waiting for the tiers to drain", total)

	// Every order ends charged or dead-lettered once its last tier is
	// done; then the dead-letter gauge catches up within its cache age.
	wantDead := 0
	for n := 1; n <= total; n++ {
		if failures, declined := outcome(n); failures < 0 || declined {
			wantDead++
		}
	}
	deadline := time.After(time.Minute + 2*o.delays[len(o.delays)-1])
	for {
		mu.Lock()
		finished := len(charged)+len(dead) >= total
		mu.Unlock()
		if finished && (config.DeadLetters == nil || scrapeValue(metricsURL, "retry_kafka_dlq_messages") >= float64(wantDead)) {
			break
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			return fmt.Errorf("not every order finished: %d charged, %d dead letters of %d", len(charged), len(dead), total)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	say("all %d orders finished: %d charged, %d in the dead-letter topic", total, total-wantDead, wantDead)
	if err := printScrape(o.out, metricsURL, say); err != nil {
		return err
	}

	mu.Lock()
	var ids []string
	for id := range dead {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var example string
	for _, id := range ids {
		if calls[id] > 1 { // exhausted, not declined: it walked every tier
			example = id
			break
		}
	}
	mu.Unlock()
	printTrace(o.out, spans.GetSpans(), example)
	return nil
}

// scrapeValue fetches url and returns the sum of the series of name (0 on
// any error).
func scrapeValue(url, name string) float64 {
	families, err := scrape(url)
	if err != nil || families[name] == nil {
		return 0
	}
	var v float64
	for _, m := range families[name].Metric {
		v += m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	return v
}

// scrape fetches url and parses the text exposition format.
func scrape(url string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", url, err)
	}
	return families, nil
}

// printScrape fetches url and prints the retry-kafka series that are not
// zero (histograms as their count and mean).
func printScrape(w io.Writer, url string, say func(string, ...any)) error {
	families, err := scrape(url)
	if err != nil {
		return err
	}
	var lines []string
	for name, f := range families {
		if !strings.HasPrefix(name, "retry_kafka_") {
			continue
		}
		for _, m := range f.Metric {
			var labels []string
			for _, l := range m.Label {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			series := name + "{" + strings.Join(labels, ",") + "}"
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				if n := m.Histogram.GetSampleCount(); n > 0 {
					lines = append(lines, fmt.Sprintf("%s count=%d mean=%.1fms", series, n, 1000*m.Histogram.GetSampleSum()/float64(n)))
				}
			case dto.MetricType_COUNTER:
				if v := m.Counter.GetValue(); v != 0 {
					lines = append(lines, fmt.Sprintf("%s %g", series, v))
				}
			case dto.MetricType_GAUGE:
				if v := m.Gauge.GetValue(); v != 0 {
					lines = append(lines, fmt.Sprintf("%s %.3g", series, v))
				}
			}
		}
	}
	sort.Strings(lines)
	say("scrape of /metrics, retry_kafka_* series that are not 0:")
	for _, l := range lines {
		fmt.Fprintln(w, "          "+l)
	}
	return nil
}

// printTrace prints the spans of the message uuid, in the order they
// started, with their parents and links.
func printTrace(w io.Writer, spans tracetest.SpanStubs, uuid string) {
	if uuid == "" {
		return
	}
	var traceID trace.TraceID
	for _, s := range spans {
		for _, kv := range s.Attributes {
			if kv.Key == "messaging.message.id" && kv.Value.AsString() == uuid {
				traceID = s.SpanContext.TraceID()
			}
		}
	}
	var mine []tracetest.SpanStub
	names := map[trace.SpanID]string{}
	for _, s := range spans {
		if s.SpanContext.TraceID() == traceID {
			mine = append(mine, s)
			names[s.SpanContext.SpanID()] = s.Name
		}
	}
	if len(mine) == 0 {
		return
	}
	sort.Slice(mine, func(i, j int) bool { return mine[i].StartTime.Before(mine[j].StartTime) })
	fmt.Fprintf(w, "\nTrace %s of dead-lettered message %s (%d spans):\n", traceID, uuid, len(mine))
	t0 := mine[0].StartTime
	for _, s := range mine {
		line := fmt.Sprintf("  +%6.3fs  %-58s", s.StartTime.Sub(t0).Seconds(), s.Name)
		if p := names[s.Parent.SpanID()]; p != "" {
			line += "  child of: " + p
		}
		for _, l := range s.Links {
			line += "  linked to: " + names[l.SpanContext.SpanID()]
		}
		if s.Status.Description != "" {
			line += "  (" + s.Status.Description + ")"
		}
		fmt.Fprintln(w, line)
	}
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}
