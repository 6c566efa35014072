// Package termgfx draws pictures in terminals: the kitty graphics protocol,
// sixel, iTerm2's inline images, and what a terminal says it can do.
//
// Everything here is pure: encoders append escape sequences to a buffer,
// the scaler writes into an image, and ParseReplies reads the terminal's
// answers to Queries. The only I/O is Ask, which writes the queries to a
// terminal in raw mode and reads its answers, up to the DA1 reply that
// every terminal sends last (or a timeout).
//
// It is its own package because none of it knows about bubbletea or the
// VM: tui decides where a tile goes and when; termgfx says how.
//
// The contract for a tile: the caller moves the cursor to the tile's
// top-left cell, then writes the encoding. Kitty tiles have an image id
// each, and sending a tile again with the same id replaces it in place;
// sixel and iTerm2 tiles are drawn into the cells and stay until text or
// another tile covers them.
package termgfx
