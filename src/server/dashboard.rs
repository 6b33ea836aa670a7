//! The dashboard at `/`: one page and its script and style sheet, built into the binary (no
//! CDN, nothing fetched at run time). It is a client of the native API like any other. Its
//! routes live in the API's route table (poem's nest at `/` would answer `/` itself) but stay
//! out of the OpenAPI document.

use poem_openapi::payload::{Html, PlainText};
use poem_openapi::{ApiResponse, OpenApi};

const PAGE: &str = include_str!("../../assets/dashboard/index.html");
const SCRIPT: &str = include_str!("../../assets/dashboard/app.js");
const STYLE: &str = include_str!("../../assets/dashboard/style.css");

pub struct Dashboard;

#[derive(ApiResponse)]
enum Asset {
    #[oai(status = 200, content_type = "text/javascript; charset=utf-8")]
    Script(
        PlainText<&'static str>,
        #[oai(header = "Cache-Control")] String,
    ),
    #[oai(status = 200, content_type = "text/css; charset=utf-8")]
    Style(
        PlainText<&'static str>,
        #[oai(header = "Cache-Control")] String,
    ),
}

/// The files change with the binary: browsers revalidate rather than keep an old script.
const REVALIDATE: &str = "no-cache";

#[OpenApi]
impl Dashboard {
    #[oai(path = "/", method = "get", hidden)]
    async fn page(&self) -> Html<&'static str> {
        Html(PAGE)
    }

    #[oai(path = "/ui/app.js", method = "get", hidden)]
    async fn script(&self) -> Asset {
        Asset::Script(PlainText(SCRIPT), REVALIDATE.into())
    }

    #[oai(path = "/ui/style.css", method = "get", hidden)]
    async fn style(&self) -> Asset {
        Asset::Style(PlainText(STYLE), REVALIDATE.into())
    }
}
