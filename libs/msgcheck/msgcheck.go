// Package msgcheck looks through a protobuf message for what no Flotilla
// message may hold, and names where it is by the field path a REST client
// sees (lowerCamelCase JSON names, list indexes, map keys): a string with a
// NUL byte, or the field that makes a message too large.
//
// In a request (a message named ...Request) paths start below a top-level
// message field, which is the resource a REST body carries: the fields of
// CreateTemplateRequest.template are named as they are in the body
// ("setupActions[2].content").
package msgcheck

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// NUL returns the path of the first string field, list element or map entry
// of m that contains a NUL byte, and whether there is one. PostgreSQL cannot
// store NUL in text, and C programs (shells among them) end strings there.
func NUL(m proto.Message) (string, bool) {
	return walk(m.ProtoReflect(), "", isRequest(m.ProtoReflect()))
}

func isRequest(m protoreflect.Message) bool {
	return strings.HasSuffix(string(m.Descriptor().Name()), "Request")
}

func walk(m protoreflect.Message, prefix string, top bool) (path string, found bool) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := join(prefix, fd, top)
		switch {
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				if path, found = value(fd, l.Get(i), fmt.Sprintf("%s[%d]", name, i)); found {
					return false
				}
			}
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if strings.IndexByte(k.String(), 0) >= 0 {
					path, found = name, true
					return false
				}
				path, found = value(fd.MapValue(), mv, fmt.Sprintf("%s[%q]", name, k.String()))
				return !found
			})
		default:
			path, found = value(fd, v, name)
		}
		return !found
	})
	return path, found
}

func value(fd protoreflect.FieldDescriptor, v protoreflect.Value, path string) (string, bool) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return path, strings.IndexByte(v.String(), 0) >= 0
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return walk(v.Message(), path, false)
	}
	return "", false
}

// join names fd under prefix; a top-level message field (the resource of a
// request) is left out of the path.
func join(prefix string, fd protoreflect.FieldDescriptor, top bool) string {
	if top && fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() {
		return ""
	}
	if prefix == "" {
		return fd.JSONName()
	}
	return prefix + "." + fd.JSONName()
}

// Largest returns the path of the field that holds most of m's encoded
// size, following the largest part down to a leaf: the field to shrink
// when m is too large.
func Largest(m proto.Message) string {
	path := ""
	msg := m.ProtoReflect()
	for top := isRequest(msg); ; top = false {
		var (
			best     protoreflect.Message
			bestPath string
			bestSize = -1
		)
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			name := join(path, fd, top)
			consider := func(p string, size int, next protoreflect.Message) {
				if size > bestSize {
					bestSize, bestPath, best = size, p, next
				}
			}
			inner := func(v protoreflect.Value) protoreflect.Message {
				if fd.Kind() == protoreflect.MessageKind {
					return v.Message()
				}
				return nil
			}
			switch {
			case fd.IsList():
				l := v.List()
				for i := range l.Len() {
					consider(fmt.Sprintf("%s[%d]", name, i), size(fd, l.Get(i)), inner(l.Get(i)))
				}
			case fd.IsMap():
				total := 0
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					total += len(k.String()) + size(fd.MapValue(), mv)
					return true
				})
				consider(name, total, nil)
			default:
				consider(name, size(fd, v), inner(v))
			}
			return true
		})
		if bestSize < 0 {
			return path
		}
		path = bestPath
		if best == nil {
			return path
		}
		msg = best
	}
}

func size(fd protoreflect.FieldDescriptor, v protoreflect.Value) int {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return len(v.String())
	case protoreflect.BytesKind:
		return len(v.Bytes())
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return proto.Size(v.Message().Interface())
	}
	return 8
}

// Scrub makes m's strings (nested messages, lists and map values) what a
// report may hold, in place: every NUL byte becomes U+FFFD, and a string
// longer than maxLen bytes is cut (at a character boundary) and ends in
// CutMarker. For what a program printed, which is reported, not refused.
func Scrub(m proto.Message, maxLen int) {
	scrub(m.ProtoReflect(), maxLen)
}

// CutMarker ends a string Scrub cut short.
const CutMarker = " …(cut)"

// RuneCut returns the largest i <= n at which s can be cut without
// splitting a UTF-8 sequence.
func RuneCut(s string, n int) int {
	if n >= len(s) {
		return len(s)
	}
	for i := n; i > n-utf8.UTFMax && i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return i
		}
	}
	return n
}

func scrub(m protoreflect.Message, maxLen int) {
	clean := func(fd protoreflect.FieldDescriptor, v protoreflect.Value) (protoreflect.Value, bool) {
		switch fd.Kind() {
		case protoreflect.StringKind:
			s := v.String()
			changed := false
			if strings.IndexByte(s, 0) >= 0 {
				s, changed = strings.ReplaceAll(s, "\x00", "\uFFFD"), true
			}
			if len(s) > maxLen {
				s, changed = s[:RuneCut(s, max(0, maxLen-len(CutMarker)))]+CutMarker, true
			}
			if changed {
				return protoreflect.ValueOfString(s), true
			}
		case protoreflect.MessageKind, protoreflect.GroupKind:
			scrub(v.Message(), maxLen)
		}
		return v, false
	}
	var fields []protoreflect.FieldDescriptor // changed after ranging, not during
	m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		fields = append(fields, fd)
		return true
	})
	for _, fd := range fields {
		v := m.Get(fd)
		switch {
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				if nv, changed := clean(fd, l.Get(i)); changed {
					l.Set(i, nv)
				}
			}
		case fd.IsMap():
			mp := v.Map()
			var keys []protoreflect.MapKey
			mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			for _, k := range keys {
				if nv, changed := clean(fd.MapValue(), mp.Get(k)); changed {
					mp.Set(k, nv)
				}
			}
		default:
			if nv, changed := clean(fd, v); changed {
				m.Set(fd, nv)
			}
		}
	}
}
