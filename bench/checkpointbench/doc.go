// Package checkpointbench measures checkpoints (issue 12): what a VM that
// runs on the workstation costs, in pause and in bytes, to be committed
// back to the server while it runs, at each of a few link rates of the
// built-in lab (package lab).
//
// A run, at each rate:
//
//  1. shapes the lab link, and checks that the Debian desktop guest (the
//     disk bench's, memory kept still) runs well on the server;
//  2. moves it to the workstation with 'handoff migrate --lab DIR --json',
//     its chunk cache a directory of the run's own;
//  3. takes Config.Count checkpoints, one every Config.Interval, each by
//     'handoff checkpoint --lab DIR --json' with the same cache (so each
//     sends against the one before, as a grab's do), counting the lab
//     link's bytes both ways around each and reading the commit's manifest
//     (its memory file's size) back from the lab's lease server;
//  4. asks the guest for its own verdict on its memory and disk, and moves
//     it home with 'handoff migrate', so the lab ends as the run found it.
//
// A turn that fails, or leaves the guest broken (on TCG, QEMU 7.2 now and
// then corrupts a guest in a live migration or snapshot: see the README),
// is kept as a row and run again on a fresh guest, up to Config.Tries.
//
// The pure parts (the checkpoint command's JSON, the medians, the guest's
// verdict from a lab status, the table) are plain functions; Run is the
// driver that owns the lab, the commands and the clock. It drives the
// handoff command itself, as a user's script would, and lives apart from
// the engines it measures, as the other benches do.
package checkpointbench
