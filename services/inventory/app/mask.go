package app

import (
	"strings"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"flotilla.dev/flotilla/libs/apierr"
)

// serverOwned reports whether a field is set by the server only: marked
// OUTPUT_ONLY in the proto, or the id/version bookkeeping fields.
func serverOwned(fd protoreflect.FieldDescriptor) bool {
	switch fd.Name() {
	case "id", "version":
		return true
	}
	opts := fd.Options()
	if opts == nil {
		return false
	}
	for _, b := range proto.GetExtension(opts, annotations.E_FieldBehavior).([]annotations.FieldBehavior) {
		if b == annotations.FieldBehavior_OUTPUT_ONLY {
			return true
		}
	}
	return false
}

// clearServerOwned clears the top-level fields a client may not set.
func clearServerOwned(m proto.Message) {
	r := m.ProtoReflect()
	fields := r.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		if fd := fields.Get(i); serverOwned(fd) {
			r.Clear(fd)
		}
	}
}

// applyMask copies the fields named by paths from src to dst. Paths use proto
// or JSON field names, dot-separated for nested messages. An empty mask
// replaces every client-settable field. Server-owned fields are skipped: a
// client may echo them back unchanged.
func applyMask(dst, src proto.Message, paths []string) error {
	if len(paths) == 0 {
		fields := dst.ProtoReflect().Descriptor().Fields()
		for i := 0; i < fields.Len(); i++ {
			paths = append(paths, string(fields.Get(i).Name()))
		}
	}
	for _, p := range paths {
		d, s := dst.ProtoReflect(), src.ProtoReflect()
		segs := strings.Split(p, ".")
		for i, seg := range segs {
			fd := d.Descriptor().Fields().ByName(protoreflect.Name(seg))
			if fd == nil {
				fd = d.Descriptor().Fields().ByJSONName(seg)
			}
			if fd == nil {
				return apierr.Invalid("updateMask", "%q names no field", p)
			}
			if i == 0 && serverOwned(fd) {
				break
			}
			last := i == len(segs)-1
			if last || fd.Kind() != protoreflect.MessageKind || fd.IsList() || fd.IsMap() {
				if !last {
					return apierr.Invalid("updateMask", "%q goes inside a field that has no sub-fields", p)
				}
				if s.Has(fd) {
					d.Set(fd, s.Get(fd))
				} else {
					d.Clear(fd)
				}
				break
			}
			if !s.Has(fd) {
				d.Clear(fd)
				break
			}
			d = d.Mutable(fd).Message()
			s = s.Get(fd).Message()
		}
	}
	return nil
}
