//! Streams of streams, from the documentation's Asynchronous Processing
//! chapter: a catalog node fetches a paginated source and streams it page
//! by page; an indexer node consumes that stream and re-yields each page's
//! products, enriched, as its own stream; the client reads the indexer's
//! stream item by item and gets a summary at the end. Each stage is paced
//! by its reader.
//!
//! ```text
//! cargo run --example paginated_fetch
//! cargo run --example paginated_fetch -- --nats nats://127.0.0.1:4222
//! ```
//!
//! It exits non-zero if an item is lost, repeated or out of order (scripts/test
//! runs it).

use futures::StreamExt;
use happen::StreamItem;
use happen::prelude::*;

/// Products in the (simulated) source, and per page.
const PRODUCTS: u64 = 23;
const PAGE: u64 = 5;

/// The source: page `n` of the catalog (an external API, say).
async fn fetch_page(n: u64) -> (Vec<Value>, bool) {
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let first = n * PAGE;
    let last = (first + PAGE).min(PRODUCTS);
    let items = (first..last)
        .map(|i| json!({ "sku": format!("SKU-{i:03}"), "price": 100 + i }))
        .collect();
    (items, last < PRODUCTS)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> happen::Result<()> {
    let url = std::env::args().skip_while(|a| a != "--nats").nth(1);
    let happen = Happen::start(url.as_deref(), HappenConfig::default()).await?;

    // Stage 1: every page, as it is fetched.
    happen
        .node("catalog")?
        .on("fetch-all", |_e: Event, cx: Context| async move {
            let mut page = 0;
            loop {
                let (items, more) = fetch_page(page).await;
                cx.emit(json!({ "page": page, "items": items })).await?;
                if !more {
                    break;
                }
                page += 1;
            }
            Ok::<_, HappenError>(json!({ "pages": page + 1 }))
        })?;

    // Stage 2: consumes the catalog's stream, re-yields product by product.
    happen
        .node("indexer")?
        .on("index-catalog", |_e: Event, cx: Context| async move {
            let mut pages = cx
                .node()
                .send("catalog", Event::new("fetch-all", json!(null)))
                .stream();
            let mut indexed = 0u64;
            let mut source_pages = Value::Null;
            while let Some(item) = pages.next().await {
                match item? {
                    StreamItem::Item(page) => {
                        for product in page["items"].as_array().into_iter().flatten() {
                            let mut entry = product.clone();
                            entry["page"] = page["page"].clone();
                            entry["indexedAs"] = json!(indexed);
                            cx.emit(entry).await?;
                            indexed += 1;
                        }
                    }
                    StreamItem::Done(summary) => source_pages = summary["pages"].clone(),
                }
            }
            Ok::<_, HappenError>(json!({ "indexed": indexed, "pages": source_pages }))
        })?;
    happen.flush().await?;

    // The client: every product in order, then the summary.
    let client = happen.node("search-ui")?;
    let mut products = client
        .send("indexer", Event::new("index-catalog", json!(null)))
        .stream();
    let mut skus = Vec::new();
    let mut summary = Value::Null;
    while let Some(item) = products.next().await {
        match item? {
            StreamItem::Item(product) => {
                skus.push(product["sku"].as_str().unwrap_or("?").to_owned())
            }
            StreamItem::Done(done) => summary = done,
        }
    }
    println!(
        "{} products in order, first {:?}, last {:?}",
        skus.len(),
        skus.first(),
        skus.last()
    );
    println!("summary: {summary}");
    let expected: Vec<String> = (0..PRODUCTS).map(|i| format!("SKU-{i:03}")).collect();
    assert_eq!(skus, expected, "every product once, in order");
    assert_eq!(
        summary,
        json!({ "indexed": PRODUCTS, "pages": PRODUCTS.div_ceil(PAGE) })
    );
    happen.shutdown().await;
    Ok(())
}

/// `cargo test` runs the example as `cargo run --example` does: its own
/// assertions decide.
#[cfg(test)]
mod tests {
    #[test]
    fn the_example_runs() {
        super::main().expect("the example ends without an error");
    }
}
