import Foundation
import FinchKernels
import FinchIO

// Python string formatting: `str.format` and printf-style `%` (the `format` filter uses `%`).

/// Python's `format_string.format(*args, **kwargs)` for `{}`, `{0}`, `{name}`, `{0[key]}`, `{0.attr}`,
/// conversions `!s` / `!r`, and a common subset of the format-spec mini-language.
func pythonStrFormat(_ format: String, _ args: JinjaArguments) throws -> String {
    let s = Array(format.unicodeScalars)
    var out = ""
    var i = 0
    var autoIndex = 0
    while i < s.count {
        let c = s[i]
        if c == "}" {
            guard i + 1 < s.count, s[i + 1] == "}" else { throw JinjaRuntimeError("Single '}' encountered in format string") }
            out += "}"
            i += 2
            continue
        }
        guard c == "{" else {
            out.unicodeScalars.append(c)
            i += 1
            continue
        }
        if i + 1 < s.count, s[i + 1] == "{" {
            out += "{"
            i += 2
            continue
        }
        var j = i + 1
        var depth = 1
        while j < s.count {
            if s[j] == "{" { depth += 1 }
            if s[j] == "}" { depth -= 1; if depth == 0 { break } }
            j += 1
        }
        guard j < s.count else { throw JinjaRuntimeError("Single '{' encountered in format string") }
        var field = String(String.UnicodeScalarView(s[(i + 1)..<j]))
        i = j + 1
        var spec = ""
        var conversion: Character? = nil
        if let colon = field.firstIndex(of: ":") {
            spec = String(field[field.index(after: colon)...])
            field = String(field[..<colon])
        }
        if let bang = field.firstIndex(of: "!") {
            conversion = field[field.index(after: bang)...].first
            field = String(field[..<bang])
        }
        // Field name: first part is an index or keyword, then .attr / [key] lookups.
        let firstEnd = field.firstIndex { $0 == "." || $0 == "[" } ?? field.endIndex
        let head = String(field[..<firstEnd])
        var value: JinjaValue
        if head.isEmpty {
            guard autoIndex < args.positional.count else { throw JinjaRuntimeError("Replacement index \(autoIndex) out of range for positional args tuple") }
            value = args.positional[autoIndex]
            autoIndex += 1
        } else if let n = Int(head) {
            guard n < args.positional.count else { throw JinjaRuntimeError("Replacement index \(n) out of range for positional args tuple") }
            value = args.positional[n]
        } else {
            guard let kw = args.keywords.last(where: { $0.0 == head }) else { throw JinjaRuntimeError("KeyError: '\(head)'") }
            value = kw.1
        }
        var rest = field[firstEnd...]
        while let first = rest.first {
            if first == "." {
                rest = rest.dropFirst()
                let end = rest.firstIndex { $0 == "." || $0 == "[" } ?? rest.endIndex
                value = try jinjaGetAttribute(value, String(rest[..<end]))
                rest = rest[end...]
            } else {
                guard let close = rest.firstIndex(of: "]") else { throw JinjaRuntimeError("Missing ']' in format string") }
                let key = String(rest[rest.index(after: rest.startIndex)..<close])
                value = try jinjaGetItem(value, Int(key).map { .int($0) } ?? .string(key))
                rest = rest[rest.index(after: close)...]
            }
        }
        if conversion == "r" { value = .string(value.pyRepr) } else if conversion == "s" { value = .string(value.pyStr) }
        out += try pythonFormatValue(value, spec: spec)
    }
    return out
}

/// Python's `format(value, spec)` for strings, ints and floats.
func pythonFormatValue(_ value: JinjaValue, spec: String) throws -> String {
    if spec.isEmpty { return value.pyStr }
    var chars = Array(spec)
    var fill: Character = " "
    var align: Character? = nil
    if chars.count >= 2, "<>^=".contains(chars[1]) {
        fill = chars[0]
        align = chars[1]
        chars.removeFirst(2)
    } else if let first = chars.first, "<>^=".contains(first) {
        align = first
        chars.removeFirst()
    }
    var sign: Character = "-"
    if let first = chars.first, "+- ".contains(first) { sign = first; chars.removeFirst() }
    if chars.first == "0" {
        if align == nil { fill = "0"; align = "=" }
        chars.removeFirst()
    }
    var widthText = ""
    while let first = chars.first, first.isNumber { widthText.append(first); chars.removeFirst() }
    var grouping: Character? = nil
    if let first = chars.first, first == "," || first == "_" { grouping = first; chars.removeFirst() }
    var precision: Int? = nil
    if chars.first == "." {
        chars.removeFirst()
        var p = ""
        while let first = chars.first, first.isNumber { p.append(first); chars.removeFirst() }
        precision = p.isEmpty ? nil : Int(p) ?? Int.max
    }
    let type = chars.first
    if chars.count > 1 { throw JinjaRuntimeError("Invalid format specifier '\(spec)'") }
    let width = Int(widthText) ?? 0
    try JinjaLimits.checkWidth(widthText.isEmpty ? 0 : width == 0 && widthText.count > 1 ? Int.max : width)
    try JinjaLimits.checkWidth(precision ?? 0)

    var body: String
    var negative = false
    switch value {
    case .string(let s):
        guard type == nil || type == "s" else { throw JinjaRuntimeError("Unknown format code '\(type!)' for object of type 'str'") }
        body = precision.map { String(String.UnicodeScalarView(s.unicodeScalars.prefix($0))) } ?? s
        return try pythonPad(body, width: width, fill: String(fill), align: align ?? "<")
    case .int, .bool, .double:
        let number = pythonNumericValue(value)!
        if case .int(let i) = number, type == nil || "dxXobc".contains(type!) {
            negative = i < 0
            let m = i.magnitude
            switch type {
            case "x": body = String(m, radix: 16)
            case "X": body = String(m, radix: 16).uppercased()
            case "o": body = String(m, radix: 8)
            case "b": body = String(m, radix: 2)
            case "c": body = Unicode.Scalar(UInt32(m)).map { String($0) } ?? ""
            default: body = String(m)
            }
            if let grouping, type == nil || type == "d" { body = group(body, with: grouping) }
        } else {
            let d = number.asDouble
            negative = d < 0 || (d == 0 && d.sign == .minus)
            let m = d.magnitude
            switch type {
            case "f", "F": body = String(format: "%.\(precision ?? 6)f", m)
            case "e", "E": body = String(format: "%.\(precision ?? 6)e", m)
            case "g", "G": body = String(format: "%.\(precision ?? 6)g", m)
            case "%": body = String(format: "%.\(precision ?? 6)f", m * 100) + "%"
            case nil:
                body = precision.map { String(format: "%.\($0 == 0 ? 1 : $0)g", m) } ?? pythonFloatRepr(m)
            default: throw JinjaRuntimeError("Unknown format code '\(type!)' for object of type 'float'")
            }
            if type == "E" || type == "G" || type == "F" { body = body.uppercased() }
            if let grouping, let dot = body.firstIndex(where: { !$0.isNumber }) {
                body = group(String(body[..<dot]), with: grouping) + body[dot...]
            } else if let grouping {
                body = group(body, with: grouping)
            }
        }
    default:
        throw JinjaRuntimeError("unsupported format string passed to \(value.typeName).__format__")
    }
    let signText = negative ? "-" : sign == "+" ? "+" : sign == " " ? " " : ""
    if align == "=" {
        let padded = try pythonPad(body, width: width - signText.count, fill: String(fill), align: ">")
        return signText + padded
    }
    return try pythonPad(signText + body, width: width, fill: String(fill), align: align ?? ">")
}

private func group(_ digits: String, with separator: Character) -> String {
    var out = ""
    for (i, c) in digits.reversed().enumerated() {
        if i > 0 && i % 3 == 0 { out.append(separator) }
        out.append(c)
    }
    return String(out.reversed())
}

/// Python's printf-style `format % values`: `%s %r %d %i %f %e %g %x %o %c %%`, flags, width,
/// precision and `%(name)s` with a dict.
func pythonPercentFormat(_ format: String, _ values: JinjaValue) throws -> String {
    let positional: [JinjaValue]
    var mapping: JinjaObject? = nil
    // Python treats any non-tuple with __getitem__ (dict, list) as a mapping: no "not all
    // arguments converted" check, and `%(name)s` looks names up in it.
    var isMappingLike = false
    switch values {
    case .tuple(let items): positional = items
    case .object(let o): positional = [values]; mapping = o; isMappingLike = true
    case .array: positional = [values]; isMappingLike = true
    default: positional = [values]
    }
    let s = Array(format)
    var out = ""
    var next = 0
    var i = 0
    func take() throws -> JinjaValue {
        guard next < positional.count else { throw JinjaRuntimeError("not enough arguments for format string") }
        defer { next += 1 }
        return positional[next]
    }
    while i < s.count {
        guard s[i] == "%" else { out.append(s[i]); i += 1; continue }
        i += 1
        guard i < s.count else { throw JinjaRuntimeError("incomplete format") }
        var value: JinjaValue? = nil
        if s[i] == "(" {
            guard let close = s[i...].firstIndex(of: ")") else { throw JinjaRuntimeError("incomplete format key") }
            let key = String(s[(i + 1)..<close])
            guard let mapping else { throw JinjaRuntimeError("format requires a mapping") }
            guard let v = mapping[key] else { throw JinjaRuntimeError("KeyError: '\(key)'") }
            value = v
            i = close + 1
        }
        var flags = ""
        while i < s.count, "-+ 0#".contains(s[i]) { flags.append(s[i]); i += 1 }
        var width = ""
        while i < s.count, s[i].isNumber { width.append(s[i]); i += 1 }
        var precision: String? = nil
        if i < s.count, s[i] == "." {
            i += 1
            var p = ""
            while i < s.count, s[i].isNumber { p.append(s[i]); i += 1 }
            precision = p
        }
        guard i < s.count else { throw JinjaRuntimeError("incomplete format") }
        let type = s[i]
        i += 1
        if type == "%" { out += "%"; continue }
        let v = try value ?? take()
        switch type {
        case "s":
            out += try pythonFormatValue(.string(v.pyStr), spec: (flags.contains("-") ? "<" : ">") + width + (precision.map { "." + $0 } ?? ""))
        case "r", "a":
            out += try pythonFormatValue(.string(v.pyRepr), spec: (flags.contains("-") ? "<" : ">") + width + (precision.map { "." + $0 } ?? ""))
        case "d", "i", "u", "x", "X", "o", "c", "f", "F", "e", "E", "g", "G":
            guard let number = pythonNumericValue(v) else {
                throw JinjaRuntimeError("%\(type) format: a real number is required, not \(v.typeName)")
            }
            var numberValue: JinjaValue = v
            if "diuxXoc".contains(type), case .double(let d) = number { numberValue = .int(Int(d)) }
            if "fFeEgG".contains(type) { numberValue = .double(number.asDouble) }
            let align = flags.contains("-") ? "<" : (flags.contains("0") ? "0=" : ">")
            let signFlag = flags.contains("+") ? "+" : flags.contains(" ") ? " " : ""
            let code = type == "i" || type == "u" ? "d" : String(type)
            let precisionPart = "fFeEgG".contains(type) ? "." + (precision ?? "6") : ""
            let formatSpec = (align == "0=" ? "0=" : align) + signFlag + width + precisionPart + code
            out += try pythonFormatValue(numberValue, spec: formatSpec)
        default:
            throw JinjaRuntimeError("unsupported format character '\(type)'")
        }
    }
    if !isMappingLike && next < positional.count {
        throw JinjaRuntimeError("not all arguments converted during string formatting")
    }
    return out
}
