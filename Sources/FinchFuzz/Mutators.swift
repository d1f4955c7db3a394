import Foundation

/// Values that tend to break size arithmetic and bounds checks.
enum Interesting {
    static let integers: [Int64] = [0, 1, -1, 2, 7, 8, 255, 256, 65535, 65536, -16, 1 << 31, (1 << 31) - 1, 1 << 32,
                                    (1 << 32) - 1, 1 << 40, 1 << 62, Int64.max, Int64.min, 100_000_000_000_000]
    static var numbers: [Any] { [0, 1, -1, -16, 0.5, 1e-300, 1e14, 2147483648, 4294967296, 9.3e18, 1e308, -1e308,
                                 100000, 5000000, 99999, 3.5, -0.0] }
    static let strings: [String] = ["", "x", String(repeating: "a", count: 100_000), "\u{0}", "NaN", "Infinity", "-1",
                                    "<|im_end|>", "{{ raise_exception('x') }}", "\u{FEFF}", "🦜🦜", "\\u0000", "..", "/etc/passwd"]
}

// MARK: - Bytes

enum ByteMutator {
    /// One random structural-agnostic change: bit flips, interesting bytes and words, truncation,
    /// insertion, deletion or duplication of a range. `protected` bytes at the start are left alone
    /// half of the time, so that mutations also reach past a header.
    static func mutate(_ data: inout [UInt8], _ rng: inout SplitMix, focus: Range<Int>? = nil) {
        if data.isEmpty { data = [UInt8(truncatingIfNeeded: rng.next())]; return }
        let region = focus.flatMap { $0.isEmpty || $0.upperBound > data.count ? nil : $0 } ?? 0..<data.count
        func position() -> Int { region.lowerBound + rng.below(region.count) }
        switch rng.below(8) {
        case 0:
            for _ in 0..<(1 + rng.below(8)) { let p = position(); data[p] ^= UInt8(1 << rng.below(8)) }
        case 1:
            data[position()] = rng.pick([0, 0xFF, 0x7F, 0x80, 0x01, 0x20, 0x22, 0x5C, 0x7B, 0x7D])
        case 2:
            let width = rng.pick([2, 4, 8]), p = position()
            writeInteger(&data, at: p, width: width, value: rng.pick(Interesting.integers))
        case 3:
            data.removeSubrange(rng.below(data.count)..<data.count)
        case 4:
            let p = position(), n = 1 + rng.below(64)
            data.insert(contentsOf: (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: p)
        case 5:
            let p = position(), n = min(1 + rng.below(64), data.count - p)
            data.removeSubrange(p..<(p + n))
        case 6:
            let p = position(), n = min(1 + rng.below(256), data.count - p)
            data.insert(contentsOf: Array(data[p..<(p + n)]), at: p)
        default:
            // f32 NaN / Inf / huge at a 4-byte boundary (weights that are not finite).
            let p = position() / 4 * 4
            let bits: UInt32 = rng.pick([0x7FC0_0000, 0x7F80_0000, 0xFF80_0000, 0x7F7F_FFFF])
            writeInteger(&data, at: p, width: 4, value: Int64(bits))
        }
    }

    static func writeInteger(_ data: inout [UInt8], at offset: Int, width: Int, value: Int64) {
        let bits = UInt64(bitPattern: value)
        for i in 0..<width where offset + i < data.count { data[offset + i] = UInt8(truncatingIfNeeded: bits >> (8 * UInt64(i))) }
    }
}

// MARK: - JSON

enum JSONMutator {
    /// A path to a value inside a JSON document: object keys and array indices.
    enum Step { case key(String), index(Int) }

    /// Every path in `value` (the document itself included), arrays sampled past their first 64 items.
    static func paths(_ value: Any, prefix: [Step] = [], into out: inout [[Step]]) {
        out.append(prefix)
        if let object = value as? [String: Any] {
            for key in object.keys.sorted() { paths(object[key]!, prefix: prefix + [.key(key)], into: &out) }
        } else if let array = value as? [Any] {
            let indices = array.count <= 64 ? Array(array.indices) : Array(0..<32) + stride(from: 32, to: array.count, by: array.count / 32).map { $0 }
            for i in indices { paths(array[i], prefix: prefix + [.index(i)], into: &out) }
        }
    }

    static func get(_ value: Any, _ path: ArraySlice<Step>) -> Any? {
        guard let step = path.first else { return value }
        switch step {
        case let .key(k): return (value as? [String: Any])?[k].flatMap { get($0, path.dropFirst()) }
        case let .index(i): return (value as? [Any]).flatMap { i < $0.count ? get($0[i], path.dropFirst()) : nil }
        }
    }

    /// `value` with the node at `path` replaced by `transform(node)`, or removed when it returns nil.
    static func update(_ value: Any, _ path: ArraySlice<Step>, _ transform: (Any) -> Any?) -> Any? {
        guard let step = path.first else { return transform(value) }
        switch step {
        case let .key(k):
            guard var object = value as? [String: Any], let child = object[k] else { return value }
            object[k] = update(child, path.dropFirst(), transform)
            return object
        case let .index(i):
            guard var array = value as? [Any], i < array.count else { return value }
            if let new = update(array[i], path.dropFirst(), transform) { array[i] = new } else { array.remove(at: i) }
            return array
        }
    }

    /// A new value for a node: another number, another type, a huge string or array, nothing.
    static func replacement(for node: Any, _ rng: inout SplitMix) -> Any? {
        switch rng.below(9) {
        case 0, 1: return rng.pick(Interesting.numbers)
        case 2: return rng.pick(Interesting.strings)
        case 3: return rng.pick([NSNull(), true, false, [Any](), [String: Any]()] as [Any])
        case 4: return nil
        case 5:
            // Many copies of a scalar, a few of anything larger: documents stay within a few MB,
            // so the harness spends its time in finch, not in its own mutations.
            if let array = node as? [Any], let first = array.first {
                let scalar = first is String || first is NSNumber || first is NSNull
                return array + Array(repeating: first, count: 1 + rng.below(scalar ? 2000 : 20))
            }
            return [node, node]
        case 6:
            // Long, but bounded: the harness must not spend its own memory on one case.
            if let s = node as? String { return String(repeating: s.isEmpty ? "a" : String(s.prefix(200)), count: 1 + rng.below(5000)) }
            return ["unexpected": node]
        case 7:
            if let n = node as? NSNumber { return -n.doubleValue }
            if let s = node as? String { return String(s.reversed()) }
            return node
        default:
            var deep: Any = 1
            for _ in 0..<(1 + rng.below(3000)) { deep = [deep] }
            return deep
        }
    }

    /// Mutates a JSON document: usually a value at a random path (structure-aware), sometimes its bytes.
    static func mutate(_ data: [UInt8], _ rng: inout SplitMix, targets: [([Step], [Any])] = []) -> [UInt8] {
        if rng.chance(0.2) {
            var bytes = data
            ByteMutator.mutate(&bytes, &rng)
            return bytes
        }
        guard let document = try? JSONSerialization.jsonObject(with: Data(data), options: [.fragmentsAllowed]) else {
            var bytes = data
            ByteMutator.mutate(&bytes, &rng)
            return bytes
        }
        var result: Any = document
        for round in 0..<(1 + rng.below(3)) {
            // Grow at most once per case (the first round): growth compounded over rounds explodes.
            if round > 0, let size = try? JSONSerialization.data(withJSONObject: result, options: [.fragmentsAllowed]).count, size > 4 << 20 { break }
            if !targets.isEmpty && rng.chance(0.5) {
                // A known-dangerous spot of this format, set to one of its dangerous values.
                let (path, values) = rng.pick(targets)
                let value = rng.pick(values)
                result = update(result, path[...]) { _ in value } ?? result
                continue
            }
            var all: [[Step]] = []
            paths(result, into: &all)
            let path = rng.pick(all)
            if let node = get(result, path[...]) {
                if path.isEmpty { result = replacement(for: node, &rng) ?? NSNull(); continue }
                var local = rng
                result = update(result, path[...]) { replacement(for: $0, &local) } ?? result
                rng = local
            }
        }
        let options: JSONSerialization.WritingOptions = [.fragmentsAllowed, .withoutEscapingSlashes]
        guard JSONSerialization.isValidJSONObject(result) || !(result is [Any] || result is [String: Any]),
              let out = try? JSONSerialization.data(withJSONObject: result, options: options), out.count <= 16 << 20 else { return data }
        return Array(out)
    }
}

// MARK: - Text

enum TextMutator {
    /// Line-level and snippet mutations of a text file (chat templates, YAML, CSV, JSONL).
    static func mutate(_ text: String, _ rng: inout SplitMix, snippets: [String]) -> String {
        var lines = text.components(separatedBy: "\n")
        switch rng.below(7) {
        case 0, 1, 2:
            // A dangerous snippet at a random place (most productive for templates and YAML).
            var t = text
            let snippet = rng.pick(snippets)
            if t.isEmpty || rng.chance(0.3) { return rng.chance(0.5) ? snippet : t + "\n" + snippet }
            let scalars = Array(t.unicodeScalars)
            let p = rng.below(scalars.count + 1)
            t = String(String.UnicodeScalarView(scalars[..<p])) + snippet + String(String.UnicodeScalarView(scalars[p...]))
            return t
        case 3:
            if !lines.isEmpty { lines.remove(at: rng.below(lines.count)) }
        case 4:
            if !lines.isEmpty {
                let i = rng.below(lines.count)
                lines.insert(contentsOf: Array(repeating: lines[i], count: 1 + rng.below(50)), at: i)
            }
        case 5:
            // Delete or duplicate one delimiter character.
            let scalars = Array(text.unicodeScalars)
            let delimiters = scalars.indices.filter { "{}%[]()'\",:-&*|>\n\t".unicodeScalars.contains(scalars[$0]) }
            guard let i = delimiters.isEmpty ? nil : rng.pick(delimiters) else { break }
            var copy = scalars
            if rng.chance(0.5) { copy.remove(at: i) } else { copy.insert(scalars[i], at: i) }
            return String(String.UnicodeScalarView(copy))
        default:
            var bytes = Array(text.utf8)
            ByteMutator.mutate(&bytes, &rng)
            return String(decoding: bytes, as: UTF8.self) + (rng.chance(0.1) ? "\u{FFFD}" : "")
        }
        return lines.joined(separator: "\n")
    }

    /// Jinja constructs that have hung, exhausted memory or crashed template engines.
    static let jinja: [String] = [
        "{% for i in range(1000000000) %}x{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{{ 'a' * 1000000000 }}",
        "{{ 'ab' * 100000 * 100000 }}",
        "{{ [1, 2] * 1000000000 }}",
        "{{ (messages * 100000000) | length }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{% macro g() %}{{ g() ~ g() }}{% endmacro %}{{ g() }}",
        "{{ '%999999999d' | format(1) }}",
        "{{ '%.999999999f' | format(1.5) }}",
        "{{ 'x' | center(1000000000) }}",
        "{{ '' | indent(999999999) }}",
        "{{ 'a b c' | wordwrap(0) }}",
        "{{ messages | tojson(indent=1000000000) }}",
        "{{ 9223372036854775807 + 1 }}",
        "{{ 99999999999 * 99999999999 * 99999999999 }}",
        "{{ -9223372036854775807 - 2 }}",
        "{{ 2 ** 100000 }}",
        "{{ 10 ** 10 ** 10 }}",
        "{{ 1 / 0 }}", "{{ 10 // 0 }}", "{{ 10 % 0 }}",
        "{{ 'abc'[::0] }}", "{{ 'abc'[9999999999999:] }}", "{{ messages[-999999999999] }}", "{{ messages[99999] }}",
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        "{{ range(100000000) | list | length }}",
        "{{ range(0, 10, 0) | list }}",
        "{{ raise_exception('fuzz') }}",
        "{% if %}", "{{ ", "{% for %}", "{% endfor %}", "{% endif %}", "{% set %}", "{{ ) }}", "{{ messages[ }}",
        "{{ x.__class__ }}", "{{ ''.__len__() }}", "{% include 'x' %}", "{% extends 'x' %}", "{% import 'x' as y %}",
        "{{ lipsum(100000) }}", "{{ cycler(1, 2).next() }}",
        "{{ messages | map(attribute='content') | join(',' * 100000) }}",
        "{{ '{:>999999999}'.format(1) }}", "{{ 'a'.ljust(999999999) }}", "{{ 'a'.replace('a', 'aa' * 100000) }}",
        "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
        "{%- for m in messages -%}{{ m }}{%- endfor -%}{{ messages[0]['content'] * 100000000 }}",
        "{{ bos_token * 999999999 }}", "{{ eos_token | string | list | length }}",
        "{% filter upper %}{{ 'x' * 1000000 }}{% endfilter %}",
        "{{ messages | selectattr('role') | list | tojson }}", "{{ {'a': 1} | dictsort | list }}",
        "{{ messages | sort(attribute='content') }}", "{{ (messages | first)['content'] | trim | title }}",
        String(repeating: "{{ ", count: 2000) + "1" + String(repeating: " }}", count: 2000),
        String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000),
        String(repeating: "{% if true %}", count: 3000) + String(repeating: "{% endif %}", count: 3000),
    ]

    /// YAML that has exhausted parsers (alias bombs, depth) and values of the wrong kind.
    static let yaml: [String] = [
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]",
        String(repeating: "[", count: 20000) + String(repeating: "]", count: 20000),
        String(repeating: "- ", count: 5000) + "x",
        "lr: .nan", "lr: .inf", "lr: -.inf", "lr: 1e400", "lr: 1e6", "batch_size: 99999999999999999999", "batch_size: -1",
        "batch_size: 0", "max_steps: -1", "max_steps: 9223372036854775807", "lora_r: 0", "lora_r: 1000000000",
        "lora_alpha: .nan", "max_length: 0", "max_length: 100000000000", "grad_accum: 0", "epochs: 1e300", "beta: -1",
        "seed: -5", "warmup_steps: 99999999999", "lora_dropout: 1.5", "method: grpo", "model: [1, 2]", "data: {a: 1}",
        "output: ''", "output: /", "precision: fp8", "lora_targets: [nope]", "lora_targets: ''", "save_steps: 0",
        "eval_steps: -3", "max_grad_norm: .nan", "weight_decay: .inf", "!!binary aGVsbG8=", "? [a, b]\n: c",
        "x: !!python/object/apply:os.system ['true']", "%YAML 9.9\n---", "---\n---\n...", "\t- tab", "key: |\n" + String(repeating: " ", count: 4) + "x",
        "model: *undefined", "<<: *undefined", "&a a: *a", "a: &a\n  b: *a",
    ]

    /// Lines of training data that are wrong in interesting ways.
    static let dataLines: [String] = [
        "{}", "[]", "null", "1", "\"text\"", "{\"messages\": null}", "{\"messages\": []}", "{\"messages\": [{}]}",
        "{\"messages\": [{\"role\": \"user\"}]}", "{\"messages\": [{\"role\": 5, \"content\": \"x\"}]}",
        "{\"messages\": [{\"role\": \"assistant\", \"content\": \"" + String(repeating: "long ", count: 20000) + "\"}]}",
        "{\"prompt\": \"a\", \"chosen\": \"\", \"rejected\": \"\"}", "{\"prompt\": 1, \"chosen\": [], \"rejected\": {}}",
        "{\"text\": \"\"}", "{\"text\": \"<|im_end|><|im_start|><|endoftext|>\"}", "{\"text\": \"\\u0000\\ud800\"}",
        "\u{FEFF}{\"text\": \"bom\"}", "{\"text\": \"a\"} trailing", "{\"text\": \"a\"", String(repeating: "{\"a\":", count: 5000),
        "{\"prompt\": \"p\", \"completion\": \"c\", \"extra\": " + String(repeating: "[", count: 3000) + String(repeating: "]", count: 3000) + "}",
        "\"unterminated", "a,b,c,d,e", "\"quoted,\"\"field\"\",x", "\"open quote,x", ",,,,", "prompt,completion,extra",
        "\r", "\r\n", "\u{85}", "\u{2028}",
    ]
}

// MARK: - GGUF fields

/// The integer fields of a GGUF file (counts, lengths, types, dimensions, offsets), found by
/// walking its header, so that mutations hit the numbers a reader trusts.
enum GGUFFields {
    struct Field { let offset: Int; let width: Int }

    static func fields(_ d: [UInt8]) -> [Field] {
        var out: [Field] = [], p = 0
        func u32() -> Int? { guard p + 4 <= d.count else { return nil }; defer { p += 4 }; return (0..<4).reduce(0) { $0 | Int(d[p + $1]) << (8 * $1) } }
        func u64() -> Int? {
            guard p + 8 <= d.count else { return nil }
            defer { p += 8 }
            let v = (0..<8).reduce(UInt64(0)) { $0 | UInt64(d[p + $1]) << (8 * UInt64($1)) }
            return v > UInt64(d.count) * 16 ? Int.max : Int(v)
        }
        func field(_ width: Int) { out.append(Field(offset: p, width: width)) }
        func string() -> Bool { field(8); guard let n = u64(), n <= d.count - p else { return false }; p += n; return true }
        let sizes: [Int: Int] = [0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8]
        func value(_ type: Int, depth: Int) -> Bool {
            if let s = sizes[type] { field(s); p += s; return p <= d.count }
            if type == 8 { return string() }
            guard type == 9, depth == 0 else { return false }
            field(4); guard let elementType = u32() else { return false }
            field(8); guard let count = u64(), count < 1 << 24 else { return false }
            for i in 0..<count {
                if i >= 8, let s = sizes[elementType] { p += s * (count - i); return p <= d.count }
                guard value(elementType, depth: 1) else { return false }
            }
            return true
        }
        p = 4
        field(4); _ = u32()
        field(8); guard let tensors = u64() else { return out }
        field(8); guard let kvs = u64() else { return out }
        for _ in 0..<min(kvs, 10_000) {
            guard string() else { return out }
            field(4); guard let type = u32(), value(type, depth: 0) else { return out }
        }
        for _ in 0..<min(tensors, 10_000) {
            guard string() else { return out }
            field(4); guard let dims = u32(), dims <= 8 else { return out }
            for _ in 0..<dims { field(8); p += 8 }
            field(4); p += 4
            field(8); p += 8
            guard p <= d.count else { return out }
        }
        return out
    }

    static func mutate(_ data: inout [UInt8], _ rng: inout SplitMix) {
        let all = fields(data)
        guard !all.isEmpty, rng.chance(0.75) else { ByteMutator.mutate(&data, &rng); return }
        for _ in 0..<(1 + rng.below(2)) {
            let f = rng.pick(all)
            var value = rng.pick(Interesting.integers)
            if rng.chance(0.4) {
                // Near the current value: off by one, doubled, halved.
                let current = (0..<f.width).reduce(Int64(0)) { $0 | Int64(data[f.offset + $1]) << (8 * Int64($1)) }
                value = rng.pick([current + 1, current - 1, current * 2, current / 2, current + 32, current &* 1000])
            }
            ByteMutator.writeInteger(&data, at: f.offset, width: f.width, value: value)
        }
    }
}
