// Package stack grows a goroutine's stack ahead of deep code, in one step
// and while the stack is still shallow.
//
// Watermill's router runs every message on a new goroutine, whose stack
// starts small (the average of the process's goroutine stacks, 2 KiB when
// most of them are idle) and is copied into one twice as large whenever
// it runs out. A copy walks and adjusts every frame on the stack, so it
// costs the more the deeper it happens: growing the stack before the deep
// part, with few frames on it, makes that copy cheaper, and one copy to
// the size the deep part needs replaces several.
package stack

// Reserve2K makes sure 2 KiB of stack are free below its caller's frame
// (a 4 KiB stack at the router's shallow depth): what a tier attempt's
// checks and a failed attempt's copy and publish need.
// bench/middleware_test.go's goroutine rows measure it.
//
//go:noinline
func Reserve2K(i int) byte {
	var buf [2 << 10]byte
	buf[i%len(buf)] = byte(i)
	return buf[(i*7+3)%len(buf)] // another element: the compiler keeps buf
}

// Reserve8K makes sure 8 KiB of stack are free below its caller's frame
// (a 16 KiB stack): what the OpenTelemetry SDK's span start and end need.
// Less still grew inside the SDK; more cost more to clear than it saved.
//
//go:noinline
func Reserve8K(i int) byte {
	var buf [8 << 10]byte
	buf[i%len(buf)] = byte(i)
	return buf[(i*7+3)%len(buf)]
}
