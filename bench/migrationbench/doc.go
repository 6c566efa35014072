// Package migrationbench measures handoff's migration engine against plain
// 'virsh migrate --live --p2p' on the built-in lab (package lab): the same
// guest, restarted fresh for each run, on the same shaped link.
//
// It lives apart from the lab and the engine it measures, as the sync
// bench does, so that neither carries a benchmark in its build.
package migrationbench
