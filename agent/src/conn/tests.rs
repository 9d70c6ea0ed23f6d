use super::*;

#[test]
fn sockaddr_v4_and_v6() {
    let mut v4 = [0u8; 28];
    v4[0..2].copy_from_slice(&2u16.to_ne_bytes());
    v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
    v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
    assert_eq!(parse_sockaddr(&v4), Some("127.0.0.1:8080".parse().unwrap()));

    let mut v6 = [0u8; 28];
    v6[0..2].copy_from_slice(&10u16.to_ne_bytes());
    v6[2..4].copy_from_slice(&443u16.to_be_bytes());
    v6[23] = 1;
    assert_eq!(parse_sockaddr(&v6), Some("[::1]:443".parse().unwrap()));

    assert_eq!(parse_sockaddr(&[]), None);
    assert_eq!(parse_sockaddr(&[1, 0, 0, 0]), None);
}
