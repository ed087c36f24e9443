package memory

// MessagingSystem returns "memory", the messaging.system attribute of the
// retry middleware's spans (it implements tiered.MessagingSystem).
func (b *Backend) MessagingSystem() string { return "memory" }
