/// JSON text helpers shared by the file writers (safetensors headers) and the chat templates' `tojson`.

/// Python's `json.encoder` string escaping.
package func jsonQuote(_ s: String, ensureASCII: Bool) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\u{08}": out += "\\b"
        case "\u{0C}": out += "\\f"
        default:
            if scalar.value < 0x20 {
                out += "\\u" + hexDigits(scalar.value, width: 4)
            } else if ensureASCII && scalar.value > 0x7E {
                if scalar.value > 0xFFFF {
                    let v = scalar.value - 0x10000
                    out += "\\u" + hexDigits(0xD800 + (v >> 10), width: 4) + "\\u" + hexDigits(0xDC00 + (v & 0x3FF), width: 4)
                } else {
                    out += "\\u" + hexDigits(scalar.value, width: 4)
                }
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

package func hexDigits(_ value: UInt32, width: Int) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}
