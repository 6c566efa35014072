// Package saveimage splits a libvirt save file into a page-aligned image of
// the guest's RAM and a recipe that rebuilds the file from it.
//
// Why. handoff sends each checkpoint's save file through a store of fixed
// 64 KiB chunks, each patched against the chunk at the same position of the
// previous checkpoint. But QEMU's migration stream puts a record header
// before every 4 KiB page, names the RAM block when it changes, and sends a
// one-byte record instead of a zero page, so a guest that changes a few pages
// shifts everything after them: every chunk looks changed. Split puts every
// page at a fixed place in the image, so an unchanged page lands at the same
// offset of the same chunk in every checkpoint, and what shifts (headers,
// the libvirt header, device state) goes to the recipe, which is small.
//
// Contract of Split:
//  1. The image starts out all zero (a new or truncated file). Split writes
//     only the pages the stream sends, so the image stays sparse; the caller
//     truncates it to Layout.ImageSize when it needs the full length.
//  2. The recipe receives the file in order: Literal for bytes kept as they
//     are, Copy for a page to take from the finished image. Replaying it
//     gives a file of the same length that QEMU loads into the same state:
//     a page sent twice gets its last content at both places, which is what
//     QEMU ends with since the last copy wins when loading.
//  3. Anything Split does not understand is an error wrapping ErrUnsupported;
//     the caller then sends the file whole. A file that ends early is an
//     error wrapping io.ErrUnexpectedEOF.
//  4. One pass over the reader, memory bounded by the read buffer and a bit
//     per RAM page.
//
// What it knows of the format, read from libvirt's src/qemu/qemu_saveimage.h
// and QEMU's migration/savevm.c, migration/savevm.h, migration/ram.c,
// migration/ram.h and migration/vmstate.c:
//
//   - libvirt header, native (little) endian: "LibvirtQemudSave" (a file
//     still being written says "LibvirtQemudPart"), then uint32 version,
//     data_len, was_running, format (0 is raw; anything else is a compressor
//     or the sparse layout), cookieOffset, 14 unused; then data_len bytes of
//     domain XML and cookie. QEMU's stream follows.
//   - QEMU stream, big endian: magic "QEVM", version 3, an optional
//     configuration record (the machine type, and the subsections
//     target-page-bits, capabilities and uuid), then sections: START and
//     FULL carry id, name, instance and version; PART and END carry the id;
//     each may be followed by a footer (0x7e and the id); COMMAND carries a
//     16-bit command and a 16-bit length; EOF ends the sections and may be
//     followed by the JSON description or anything else, kept as it is.
//   - The "ram" section (version 4): records of a be64 holding a page's
//     offset in its block and flags in the low 12 bits. MEM_SIZE gives the
//     block list (total size, then name length, name and used length per
//     block; postcopy hugepages, ignore-shared and mapped-ram add fields we
//     do not parse and the total then fails to add up); ZERO and PAGE name
//     the block unless CONTINUE is set and carry a byte or a 4 KiB page; EOS
//     ends the section's payload; MULTIFD_FLUSH carries nothing. XBZRLE,
//     compressed pages and RDMA hooks are refused.
//   - Only ram may be iterable. Once the first FULL section (device state)
//     or EOF comes, the rest of the file is one literal.
//
// Image layout: the RAM blocks one after the other in the order of the
// stream's block list, each starting at a 1 MiB-aligned offset; a page at
// offset X of a block is at the block's Offset + X.
package saveimage
