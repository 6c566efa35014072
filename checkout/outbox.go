package checkout

import "github.com/handoff-dev/handoff/checkout/event"

// outbox holds events the subscriber has not taken yet. Phase-like events
// are all kept, in order; a progress report replaces an unread one of the
// same kind just before it, so a slow reader sees the newest.
type outbox struct{ q []event.Event }

func (o *outbox) put(e event.Event) {
	if n := len(o.q); n > 0 && progressOfSameKind(o.q[n-1], e) {
		o.q[n-1] = e
		return
	}
	o.q = append(o.q, e)
}

func progressOfSameKind(a, b event.Event) bool {
	switch a.(type) {
	case event.Progress:
		_, ok := b.(event.Progress)
		return ok
	case event.DiskProgress:
		_, ok := b.(event.DiskProgress)
		return ok
	}
	return false
}

// head is the next event and the channel to offer it on: a nil channel
// when there is none, which switches the select case off.
func (o *outbox) head(c chan event.Event) (chan event.Event, event.Event) {
	if len(o.q) == 0 {
		return nil, nil
	}
	return c, o.q[0]
}

func (o *outbox) pop() { o.q[0] = nil; o.q = o.q[1:] }
