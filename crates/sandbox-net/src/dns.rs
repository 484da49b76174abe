//! Just enough DNS to answer for the sandbox resolver: find the question, build
//! header-only error answers, and check that an upstream answer matches the query.

pub const HEADER: usize = 12;
const QR: u16 = 0x8000;
const OPCODE: u16 = 0x7800;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;

pub const RCODE_SERVFAIL: u16 = 2;
pub const RCODE_REFUSED: u16 = 5;

/// A query with exactly one well-formed question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    flags: u16,
    /// End of the question section (header + qname + qtype + qclass).
    question_end: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses a query; `None` for anything that is not a single-question query.
pub fn parse_query(q: &[u8]) -> Option<Query> {
    let id = u16_at(q, 0)?;
    let flags = u16_at(q, 2)?;
    if flags & QR != 0 || u16_at(q, 4)? != 1 {
        return None;
    }
    // Labels until the root; queries never use compression pointers.
    let mut at = HEADER;
    loop {
        let len = usize::from(*q.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 || at - HEADER + len + 1 > 255 {
            return None;
        }
        at += 1 + len;
    }
    let question_end = at + 4;
    (q.len() >= question_end).then_some(Query { id, flags, question_end })
}

fn response(q: &[u8], query: Query, extra_flags: u16, rcode: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(query.question_end);
    out.extend_from_slice(&query.id.to_be_bytes());
    let flags = QR | (query.flags & (OPCODE | RD)) | RA | extra_flags | (rcode & 0xf);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question, no records
    out.extend_from_slice(&q[HEADER..query.question_end]);
    out
}

/// An error answer (REFUSED, SERVFAIL) echoing the question, as stub resolvers require.
pub fn error_response(q: &[u8], query: Query, rcode: u16) -> Vec<u8> {
    response(q, query, 0, rcode)
}

/// An empty answer with TC set: the real one does not fit the guest's datagram.
pub fn truncated_response(q: &[u8], query: Query) -> Vec<u8> {
    response(q, query, TC, 0)
}

/// Whether `answer` answers `q`: same id, a response, same question (case-insensitive,
/// since resolvers may echo 0x20-randomized names either way).
pub fn answer_matches(q: &[u8], query: Query, answer: &[u8]) -> bool {
    answer.len() >= query.question_end
        && u16_at(answer, 0) == Some(query.id)
        && u16_at(answer, 2).is_some_and(|f| f & QR != 0)
        && u16_at(answer, 4) == Some(1)
        && answer[HEADER..query.question_end].eq_ignore_ascii_case(&q[HEADER..query.question_end])
}

/// The RCODE of a response, for tests and audit.
pub fn rcode(answer: &[u8]) -> Option<u16> {
    u16_at(answer, 2).map(|f| f & 0xf)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn refused_echoes_question() {
        let q = query(0xbeef, "example.com");
        let p = parse_query(&q).unwrap();
        let r = error_response(&q, p, RCODE_REFUSED);
        assert_eq!(&r[0..2], &[0xbe, 0xef]);
        assert_eq!(rcode(&r), Some(5));
        assert!(answer_matches(&q, p, &r));
        assert_eq!(r[2] & 0x01, 0x01, "RD copied");
        let t = truncated_response(&q, p);
        assert_eq!(u16_at(&t, 2).unwrap() & TC, TC);
    }

    #[test]
    fn rejects_hostile_queries() {
        assert!(parse_query(&[]).is_none());
        assert!(parse_query(&[0; 11]).is_none());
        let mut q = query(1, "a.b");
        q[4] = 0;
        q[5] = 2; // two questions
        assert!(parse_query(&q).is_none());
        let mut q = query(1, "a.b");
        q[12] = 0xc0; // compression pointer
        assert!(parse_query(&q).is_none());
        let q = query(1, "a.b");
        assert!(parse_query(&q[..q.len() - 1]).is_none());
        let mut long = query(1, "x");
        long.truncate(HEADER);
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(parse_query(&long).is_none(), "name over 255 bytes");
        let mut resp = query(1, "a.b");
        resp[2] |= 0x80;
        assert!(parse_query(&resp).is_none());
    }

    #[test]
    fn answer_must_match() {
        let q = query(7, "example.com");
        let p = parse_query(&q).unwrap();
        let mut a = q.clone();
        a[2] |= 0x80;
        assert!(answer_matches(&q, p, &a));
        a[13] = b'E';
        assert!(answer_matches(&q, p, &a));
        a[0] = 9;
        assert!(!answer_matches(&q, p, &a));
        assert!(!answer_matches(&q, p, &q), "a query is not an answer");
    }
}
