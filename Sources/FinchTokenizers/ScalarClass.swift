import FinchKernels
import FinchIO

/// Unicode properties of a scalar as one bit mask, so a regex class such as `[^\s\p{L}\p{N}]`
/// is one AND: a bit per general category (the semantics of Oniguruma's `\p{L}`, `\p{N}`, ...
/// that Hugging Face tokenizers uses), plus White_Space (`\s`) and "is \r or \n".
enum ScalarClass {
    static let lu: UInt32 = 1 << 0, ll: UInt32 = 1 << 1, lt: UInt32 = 1 << 2, lm: UInt32 = 1 << 3, lo: UInt32 = 1 << 4
    static let mn: UInt32 = 1 << 5, mc: UInt32 = 1 << 6, me: UInt32 = 1 << 7
    static let nd: UInt32 = 1 << 8, nl: UInt32 = 1 << 9, no: UInt32 = 1 << 10
    static let pc: UInt32 = 1 << 11, pd: UInt32 = 1 << 12, ps: UInt32 = 1 << 13, pe: UInt32 = 1 << 14
    static let pi: UInt32 = 1 << 15, pf: UInt32 = 1 << 16, po: UInt32 = 1 << 17
    static let sm: UInt32 = 1 << 18, sc: UInt32 = 1 << 19, sk: UInt32 = 1 << 20, so: UInt32 = 1 << 21
    static let zs: UInt32 = 1 << 22, zl: UInt32 = 1 << 23, zp: UInt32 = 1 << 24
    static let cc: UInt32 = 1 << 25, cf: UInt32 = 1 << 26, cs: UInt32 = 1 << 27, co: UInt32 = 1 << 28, cn: UInt32 = 1 << 29
    /// Unicode White_Space, what `\s` matches.
    static let whiteSpace: UInt32 = 1 << 30
    /// `\r` or `\n`.
    static let lineBreak: UInt32 = 1 << 31

    static let letter = lu | ll | lt | lm | lo
    static let mark = mn | mc | me
    static let number = nd | nl | no
    static let punctuation = pc | pd | ps | pe | pi | pf | po
    static let symbol = sm | sc | sk | so
    static let separator = zs | zl | zp
    static let other = cc | cf | cs | co | cn
    /// `\w` in Unicode mode: letters, marks, decimal digits, connector punctuation (and letter numbers).
    static let word = letter | mark | nd | nl | pc

    /// General-category names as `\p{...}` accepts them, short and long.
    static let categoryNames: [String: UInt32] = [
        "L": letter, "Letter": letter, "Lu": lu, "Uppercase_Letter": lu, "Ll": ll, "Lowercase_Letter": ll,
        "Lt": lt, "Titlecase_Letter": lt, "Lm": lm, "Modifier_Letter": lm, "Lo": lo, "Other_Letter": lo,
        "M": mark, "Mark": mark, "Combining_Mark": mark, "Mn": mn, "Nonspacing_Mark": mn, "Mc": mc, "Spacing_Mark": mc,
        "Me": me, "Enclosing_Mark": me,
        "N": number, "Number": number, "Nd": nd, "Decimal_Number": nd, "Nl": nl, "Letter_Number": nl, "No": no, "Other_Number": no,
        "P": punctuation, "Punctuation": punctuation, "Pc": pc, "Connector_Punctuation": pc, "Pd": pd, "Dash_Punctuation": pd,
        "Ps": ps, "Open_Punctuation": ps, "Pe": pe, "Close_Punctuation": pe, "Pi": pi, "Initial_Punctuation": pi,
        "Pf": pf, "Final_Punctuation": pf, "Po": po, "Other_Punctuation": po,
        "S": symbol, "Symbol": symbol, "Sm": sm, "Math_Symbol": sm, "Sc": sc, "Currency_Symbol": sc,
        "Sk": sk, "Modifier_Symbol": sk, "So": so, "Other_Symbol": so,
        "Z": separator, "Separator": separator, "Zs": zs, "Space_Separator": zs, "Zl": zl, "Line_Separator": zl,
        "Zp": zp, "Paragraph_Separator": zp,
        "C": other, "Other": other, "Cc": cc, "Control": cc, "Cf": cf, "Format": cf, "Cs": cs, "Surrogate": cs,
        "Co": co, "Private_Use": co, "Cn": cn, "Unassigned": cn,
        "Any": ~0 as UInt32,
    ]

    /// The class bits of scalar value `v`.
    @inline(__always)
    static func of(_ v: UInt32) -> UInt32 {
        if v < 0x10000 { return bmp[Int(v)] }
        return compute(v)
    }

    /// All of the Basic Multilingual Plane, computed once (256 KB): the hot path is one load.
    private static let bmp: [UInt32] = (0..<0x10000).map { compute(UInt32($0)) }

    static func compute(_ v: UInt32) -> UInt32 {
        guard let scalar = Unicode.Scalar(v) else { return cs }
        var bits: UInt32
        switch scalar.properties.generalCategory {
        case .uppercaseLetter: bits = lu
        case .lowercaseLetter: bits = ll
        case .titlecaseLetter: bits = lt
        case .modifierLetter: bits = lm
        case .otherLetter: bits = lo
        case .nonspacingMark: bits = mn
        case .spacingMark: bits = mc
        case .enclosingMark: bits = me
        case .decimalNumber: bits = nd
        case .letterNumber: bits = nl
        case .otherNumber: bits = no
        case .connectorPunctuation: bits = pc
        case .dashPunctuation: bits = pd
        case .openPunctuation: bits = ps
        case .closePunctuation: bits = pe
        case .initialPunctuation: bits = pi
        case .finalPunctuation: bits = pf
        case .otherPunctuation: bits = po
        case .mathSymbol: bits = sm
        case .currencySymbol: bits = sc
        case .modifierSymbol: bits = sk
        case .otherSymbol: bits = so
        case .spaceSeparator: bits = zs
        case .lineSeparator: bits = zl
        case .paragraphSeparator: bits = zp
        case .control: bits = cc
        case .format: bits = cf
        case .surrogate: bits = cs
        case .privateUse: bits = co
        case .unassigned: bits = cn
        @unknown default: bits = cn
        }
        if scalar.properties.isWhitespace { bits |= whiteSpace }
        if v == 0x0A || v == 0x0D { bits |= lineBreak }
        return bits
    }
}

/// A run of text decoded once into scalars with their class bits and UTF-8 offsets, which the
/// pre-tokenizer scanners and the regex matcher walk. Storage is reused between calls.
final class ScalarText {
    private(set) var scalars: UnsafeMutablePointer<UInt32>
    private(set) var classes: UnsafeMutablePointer<UInt32>
    /// `offsets[i]` is the UTF-8 offset of scalar `i`; `offsets[count]` the byte count.
    private(set) var offsets: UnsafeMutablePointer<Int32>
    private(set) var count = 0
    private var capacity: Int

    init(capacity: Int = 256) {
        self.capacity = capacity
        scalars = .allocate(capacity: capacity)
        classes = .allocate(capacity: capacity)
        offsets = .allocate(capacity: capacity + 1)
    }

    deinit {
        scalars.deallocate()
        classes.deallocate()
        offsets.deallocate()
    }

    private func reserve(_ n: Int) {
        guard n > capacity else { return }
        let newCapacity = max(n, capacity * 2)
        scalars.deallocate(); classes.deallocate(); offsets.deallocate()
        scalars = .allocate(capacity: newCapacity)
        classes = .allocate(capacity: newCapacity)
        offsets = .allocate(capacity: newCapacity + 1)
        capacity = newCapacity
    }

    /// Decodes `n` bytes of valid UTF-8.
    func load(_ p: UnsafePointer<UInt8>, _ n: Int) {
        reserve(n)
        var i = 0, k = 0
        while i < n {
            let b0 = UInt32(p[i])
            var v: UInt32, len: Int
            if b0 < 0x80 { v = b0; len = 1 }
            else if b0 < 0xE0 { v = (b0 & 0x1F) << 6 | UInt32(p[i + 1] & 0x3F); len = 2 }
            else if b0 < 0xF0 { v = (b0 & 0x0F) << 12 | UInt32(p[i + 1] & 0x3F) << 6 | UInt32(p[i + 2] & 0x3F); len = 3 }
            else { v = (b0 & 0x07) << 18 | UInt32(p[i + 1] & 0x3F) << 12 | UInt32(p[i + 2] & 0x3F) << 6 | UInt32(p[i + 3] & 0x3F); len = 4 }
            scalars[k] = v
            classes[k] = ScalarClass.of(v)
            offsets[k] = Int32(i)
            i += len; k += 1
        }
        offsets[k] = Int32(n)
        count = k
    }
}

/// Length of the UTF-8 sequence that starts with byte `b` (1 for continuation bytes).
@inline(__always)
func utf8SequenceLength(_ b: UInt8) -> Int {
    if b < 0xC0 { return 1 }
    if b < 0xE0 { return 2 }
    if b < 0xF0 { return 3 }
    return 4
}

/// Appends the UTF-8 encoding of scalar value `v`.
@inline(__always)
func appendUTF8(_ v: UInt32, to bytes: inout [UInt8]) {
    if v < 0x80 { bytes.append(UInt8(v)) }
    else if v < 0x800 { bytes.append(UInt8(0xC0 | v >> 6)); bytes.append(UInt8(0x80 | v & 0x3F)) }
    else if v < 0x10000 {
        bytes.append(UInt8(0xE0 | v >> 12)); bytes.append(UInt8(0x80 | (v >> 6) & 0x3F)); bytes.append(UInt8(0x80 | v & 0x3F))
    } else {
        bytes.append(UInt8(0xF0 | v >> 18)); bytes.append(UInt8(0x80 | (v >> 12) & 0x3F))
        bytes.append(UInt8(0x80 | (v >> 6) & 0x3F)); bytes.append(UInt8(0x80 | v & 0x3F))
    }
}
