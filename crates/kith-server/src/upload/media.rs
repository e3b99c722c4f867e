//! What the server learns from an uploaded file, off the request path:
//! a thumbnail and a BlurHash placeholder for images (JPEG, PNG, WebP, GIF) and
//! the duration of Ogg Opus voice notes. Pure functions over bytes; the caller
//! reads the blob and stores the results.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

/// Image types the server makes thumbnails for.
pub fn is_thumbnailable(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/jpeg" | "image/png" | "image/webp" | "image/gif"
    )
}

/// Audio types whose duration the server reads (Ogg with Opus inside).
pub fn is_ogg(content_type: &str) -> bool {
    matches!(content_type, "audio/ogg" | "audio/opus" | "application/ogg")
}

/// A thumbnail made from an image.
#[derive(Debug)]
pub struct Thumbnail {
    /// The original's dimensions, after EXIF orientation.
    pub width: u32,
    pub height: u32,
    /// JPEG bytes of the thumbnail and its dimensions.
    pub jpeg: Vec<u8>,
    pub thumb_width: u32,
    pub thumb_height: u32,
    pub blurhash: String,
}

/// Why no thumbnail was made (the upload itself is unaffected).
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("image: {0}")]
    Image(#[from] image::ImageError),
    #[error("reading image: {0}")]
    Io(#[from] std::io::Error),
    #[error("image has {0} pixels, more than allowed")]
    TooManyPixels(u64),
}

/// Decodes `bytes` (at most `max_pixels` pixels; the decoder's `Limits` also cap
/// its allocations, so a decompression bomb fails instead of exhausting memory)
/// and scales it to fit in `size`×`size`.
pub fn thumbnail(bytes: &[u8], size: u32, max_pixels: u64) -> Result<Thumbnail, ThumbnailError> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(32_768);
    limits.max_image_height = Some(32_768);
    // RGBA8 of the largest allowed image, plus room for one conversion.
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let mut decoder = reader.into_decoder()?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(ThumbnailError::TooManyPixels(pixels));
    }
    let orientation = decoder.orientation()?;
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    let (width, height) = (image.width(), image.height());
    let thumb = image.thumbnail(size, size).to_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80).encode_image(&thumb)?;
    let small = image::imageops::thumbnail(&thumb, 32, 32);
    let blurhash = blurhash::encode(4, 3, small.width(), small.height(), small.as_raw());
    Ok(Thumbnail {
        width,
        height,
        jpeg,
        thumb_width: thumb.width(),
        thumb_height: thumb.height(),
        blurhash,
    })
}

/// Ogg (RFC 3533) with Opus (RFC 7845): the duration in seconds, from the
/// pre-skip in the `OpusHead` of the first page (§5.1) and the granule position
/// of the last page of the stream, which counts 48 kHz samples (§4).
/// `head` is the start of the file, `tail` its last bytes.
pub fn ogg_opus_duration(head: &[u8], tail: &[u8]) -> Option<f64> {
    let first = OggPage::parse(head)?;
    let payload = head.get(first.payload_start..)?;
    if !payload.starts_with(b"OpusHead") {
        return None;
    }
    let pre_skip = u16::from_le_bytes([*payload.get(10)?, *payload.get(11)?]);
    // The last page of this stream in the tail: scan for capture patterns.
    let mut granule = None;
    let mut at = 0;
    while let Some(offset) = find(&tail[at..], b"OggS") {
        let start = at + offset;
        if let Some(page) = OggPage::parse(&tail[start..])
            && page.serial == first.serial
            && page.granule >= 0
        {
            granule = Some(page.granule);
        }
        at = start + 4;
    }
    let samples = granule? - i64::from(pre_skip);
    (samples >= 0).then(|| samples as f64 / 48_000.0)
}

struct OggPage {
    granule: i64,
    serial: u32,
    payload_start: usize,
}

impl OggPage {
    /// RFC 3533 §6: the 27-byte header and the segment table.
    fn parse(bytes: &[u8]) -> Option<OggPage> {
        if bytes.len() < 27 || &bytes[..4] != b"OggS" || bytes[4] != 0 {
            return None;
        }
        let granule = i64::from_le_bytes(bytes[6..14].try_into().ok()?);
        let serial = u32::from_le_bytes(bytes[14..18].try_into().ok()?);
        let segments = usize::from(bytes[26]);
        Some(OggPage {
            granule,
            serial,
            payload_start: 27 + segments,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// BlurHash (<https://blurha.sh>, the reference TypeScript encoder's algorithm):
/// a DCT of the image in linear RGB, quantised and written in base 83.
pub mod blurhash {
    use std::f32::consts::PI;

    const BASE83: &[u8; 83] =
        b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";

    /// Encodes an RGB8 image (`rgb.len() == 3 × width × height`) with
    /// `x`×`y` components (each 1..=9).
    pub fn encode(x: u32, y: u32, width: u32, height: u32, rgb: &[u8]) -> String {
        let (x, y) = (x.clamp(1, 9), y.clamp(1, 9));
        let mut factors = Vec::with_capacity((x * y) as usize);
        for j in 0..y {
            for i in 0..x {
                factors.push(factor(i, j, width, height, rgb));
            }
        }
        let mut hash = String::with_capacity(4 + 2 * factors.len() + 2);
        push_base83(&mut hash, (x - 1) + (y - 1) * 9, 1);
        let (dc, ac) = factors.split_first().unwrap_or((&[0.0; 3], &[]));
        let maximum = if ac.is_empty() {
            push_base83(&mut hash, 0, 1);
            1.0
        } else {
            let actual = ac
                .iter()
                .flat_map(|f| f.iter())
                .fold(0.0f32, |m, v| m.max(v.abs()));
            let quantised = ((actual * 166.0 - 0.5).floor()).clamp(0.0, 82.0) as u32;
            push_base83(&mut hash, quantised, 1);
            (quantised as f32 + 1.0) / 166.0
        };
        let dc_value =
            (linear_to_srgb(dc[0]) << 16) | (linear_to_srgb(dc[1]) << 8) | linear_to_srgb(dc[2]);
        push_base83(&mut hash, dc_value, 4);
        for f in ac {
            let q =
                |v: f32| ((sign_pow(v / maximum, 0.5) * 9.0 + 9.5).floor()).clamp(0.0, 18.0) as u32;
            push_base83(&mut hash, q(f[0]) * 19 * 19 + q(f[1]) * 19 + q(f[2]), 2);
        }
        hash
    }

    fn factor(i: u32, j: u32, width: u32, height: u32, rgb: &[u8]) -> [f32; 3] {
        let mut sum = [0.0f32; 3];
        for py in 0..height {
            let cy = (PI * j as f32 * py as f32 / height as f32).cos();
            for px in 0..width {
                let basis = (PI * i as f32 * px as f32 / width as f32).cos() * cy;
                let at = 3 * (py * width + px) as usize;
                let Some(pixel) = rgb.get(at..at + 3) else {
                    continue;
                };
                for c in 0..3 {
                    sum[c] += basis * srgb_to_linear(pixel[c]);
                }
            }
        }
        let normalisation = if i == 0 && j == 0 { 1.0 } else { 2.0 };
        let scale = normalisation / (width.max(1) * height.max(1)) as f32;
        sum.map(|v| v * scale)
    }

    fn srgb_to_linear(value: u8) -> f32 {
        let v = f32::from(value) / 255.0;
        if v <= 0.04045 {
            v / 12.92
        } else {
            ((v + 0.055) / 1.055).powf(2.4)
        }
    }

    fn linear_to_srgb(value: f32) -> u32 {
        let v = value.clamp(0.0, 1.0);
        if v <= 0.003_130_8 {
            (v * 12.92 * 255.0 + 0.5) as u32
        } else {
            ((1.055 * v.powf(1.0 / 2.4) - 0.055) * 255.0 + 0.5) as u32
        }
    }

    fn sign_pow(value: f32, exp: f32) -> f32 {
        value.abs().powf(exp).copysign(value)
    }

    fn push_base83(out: &mut String, value: u32, length: u32) {
        for i in 1..=length {
            let digit = (value / 83u32.pow(length - i)) % 83;
            out.push(char::from(BASE83[digit as usize]));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_solid_colour_keeps_its_colour_in_the_dc_component() {
            let rgb: Vec<u8> = [255u8, 0, 0].repeat(16);
            let hash = encode(4, 3, 4, 4, &rgb);
            // size flag (4-1) + (3-1)×9 = 21 → 'L'; then the AC maximum; then the
            // DC 0xFF0000 in four base-83 digits; then eleven 2-digit ACs. (The
            // reference samples the basis at x/width, so a 4-pixel-wide solid
            // image has non-zero AC terms: 1 + cos π/4 + cos π/2 + cos 3π/4 ≠ 0.)
            assert_eq!(hash.len(), 1 + 1 + 4 + 2 * 11);
            assert_eq!(&hash[..1], "L");
            assert_eq!(&hash[2..6], "TI:j");
            assert_eq!(hash, "L~TI:j|cfQ|c|c$5fQ$5fQfQfQfQ");
        }

        #[test]
        fn base83_digits() {
            let mut s = String::new();
            push_base83(&mut s, 0xFF0000, 4);
            assert_eq!(s, "TI:j");
        }

        #[test]
        fn a_gradient_has_a_horizontal_component() {
            let mut rgb = Vec::new();
            for _y in 0..8 {
                for x in 0..8u8 {
                    rgb.extend_from_slice(&[x * 32, x * 32, x * 32]);
                }
            }
            let hash = encode(4, 3, 8, 8, &rgb);
            assert_eq!(hash.len(), 28);
            assert_ne!(&hash[1..2], "0", "a non-zero AC maximum");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ogg_page(granule: i64, serial: u32, payload: &[u8]) -> Vec<u8> {
        let mut page = b"OggS".to_vec();
        page.push(0);
        page.push(0);
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&serial.to_le_bytes());
        page.extend_from_slice(&[0; 8]); // sequence, CRC (not checked)
        page.push(1);
        page.push(payload.len() as u8);
        page.extend_from_slice(payload);
        page
    }

    #[test]
    fn opus_duration_from_granule_and_pre_skip() {
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, 1]);
        head.extend_from_slice(&312u16.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        let mut file = ogg_page(0, 7, &head);
        file.extend(ogg_page(48_000, 7, b"audio"));
        file.extend(ogg_page(96_312 + 24_000, 7, b"audio"));
        let duration = ogg_opus_duration(&file, &file).expect("parsed");
        assert!((duration - 2.5).abs() < 1e-9, "{duration}");
        assert_eq!(ogg_opus_duration(b"not ogg", b""), None);
        let vorbis = ogg_page(0, 7, b"\x01vorbis");
        assert_eq!(ogg_opus_duration(&vorbis, &vorbis), None);
    }

    #[test]
    fn thumbnails_fit_the_box_and_garbage_is_refused() {
        let image = image::RgbImage::from_fn(640, 480, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(image)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("encode");
        let thumb = thumbnail(&png, 320, 1_000_000).expect("thumbnail");
        assert_eq!((thumb.width, thumb.height), (640, 480));
        assert_eq!((thumb.thumb_width, thumb.thumb_height), (320, 240));
        assert!(thumb.jpeg.starts_with(&[0xFF, 0xD8]));
        assert_eq!(thumb.blurhash.len(), 28);
        assert!(matches!(
            thumbnail(&png, 320, 1000),
            Err(ThumbnailError::TooManyPixels(307_200))
        ));
        assert!(thumbnail(b"\x89PNG\r\n\x1a\nbroken", 320, 1_000_000).is_err());
    }
}
