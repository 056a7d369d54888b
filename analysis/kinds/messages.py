"""The message catalogue of reports, figures and console tables: English, Japanese, Korean.

Statistical terms follow the vocabulary the regulators publish: the Japanese texts of ICH E9 and
E9(R1) as MHLW/PMDA issue them (推定対象, 解析対象集団, 信頼区間, ハザード比, 感度分析) and the
Korean MFDS guidelines (의약품 임상시험 통계 가이드라인; 임상시험의 추정대상모수(Estimand) 및
민감도 분석 가이드라인: 추정대상모수, 분석군, 신뢰구간, 위험비, 중도절단). Abbreviations (CI, HR,
VE, N, NR, NE, p) stay Latin in every language, as Japanese and Korean review reports write them.

Each entry is ``key: (English, Japanese, Korean)`` with the same ``{placeholders}``;
tests/test_i18n.py checks that every key has all three and that the placeholders agree.
"""

from __future__ import annotations

_LANG_INDEX = {"en": 0, "ja": 1, "ko": 2}

MESSAGES: dict[str, tuple[str, str, str]] = {
    # -- general ---------------------------------------------------------------------------
    "versus": ("{a} vs {b}", "{a} 対 {b}", "{a} 대 {b}"),
    "unit.days": ("days", "日", "일"),
    "unit.weeks": ("weeks", "週", "주"),
    "unit.months": ("months", "カ月", "개월"),
    "unit.years": ("years", "年", "년"),
    "ci": ("{conf}% CI", "{conf}%信頼区間", "{conf}% 신뢰구간"),
    "n": ("N", "N", "N"),
    "n_header": ("{group} (N = {n})", "{group}（N = {n}）", "{group} (N = {n})"),
    "events": ("Events", "イベント数", "사건 수"),
    "censored": ("Censored", "打ち切り数", "중도절단 수"),
    "group": ("Group", "群", "군"),
    "overall": ("Overall", "全体", "전체"),
    "time": ("Time ({unit})", "期間（{unit}）", "기간 ({unit})"),
    "time_no_unit": ("Time", "期間", "기간"),
    "at_risk": ("At risk", "リスク例数", "위험 대상자 수"),
    "number_at_risk": ("Number at risk", "リスク例数", "위험 대상자 수"),
    "p": ("p", "p値", "p값"),
    "note": ("Note: {text}", "注：{text}", "참고: {text}"),
    "effect": (
        "{label}: {value} ({ci} {bounds}); {p}",
        "{label}：{value}（{ci} {bounds}）、{p}",
        "{label}: {value} ({ci} {bounds}); {p}",
    ),
    "effect_p": ("{label}: {p}", "{label}：{p}", "{label}: {p}"),
    "effect_method": ("{text} ({method})", "{text}（{method}）", "{text} ({method})"),
    "list_sep": (", ", "、", ", "),
    "clause_sep": ("; ", "；", "; "),
    "term.level": ("{var}: {level}", "{var}：{level}", "{var}: {level}"),
    "site_country": ("{site} ({country})", "{site}（{country}）", "{site} ({country})"),
    "percent_axis": ("{what} (%)", "{what}（%）", "{what} (%)"),
    "yes": ("yes", "あり", "예"),
    "no": ("NO", "なし", "아니요"),
    "all_subjects": ("All subjects", "全被験者", "전체 대상자"),
    "none": ("none", "なし", "없음"),
    # -- Table 1 ---------------------------------------------------------------------------
    "summary.heading": (
        "Subjects and baseline characteristics by {by}",
        "被験者背景（{by}別）",
        "{by}별 대상자 특성",
    ),
    "summary.subjects": ("Subjects, n", "被験者数", "대상자 수"),
    "summary.age": (
        "Age (years), mean (SD)",
        "年齢（歳）、平均値（標準偏差）",
        "나이(세), 평균(표준편차)",
    ),
    "summary.sex": ("Sex, n (%)", "性別、例数（%）", "성별, n (%)"),
    "summary.events": (
        "{param}: events, n (%)",
        "{param}：イベント、例数（%）",
        "{param}: 사건, n (%)",
    ),
    "summary.censored": (
        "{param}: censored, n (%)",
        "{param}：打ち切り、例数（%）",
        "{param}: 중도절단, n (%)",
    ),
    "summary.withheld": (
        "† {group}: excludes site(s) {sites}, whose cells were below the minimum cell count.",
        "† {group}：最小セル数未満のため施設 {sites} を含まない。",
        "† {group}: 최소 셀 수 미만으로 기관 {sites} 제외.",
    ),
    "summary.partial": ("{value}†", "{value}†", "{value}†"),
    # -- Kaplan-Meier ----------------------------------------------------------------------
    "km.heading": (
        "Kaplan–Meier estimates of {param} by {by}",
        "{param}のKaplan–Meier推定（{by}別）",
        "{by}별 {param}의 Kaplan–Meier 추정",
    ),
    "km.title": (
        "{param}: Kaplan–Meier estimates by {by}",
        "{param}：Kaplan–Meier推定（{by}別）",
        "{param}: {by}별 Kaplan–Meier 추정",
    ),
    "km.medians_no_unit": (
        "Median time to event with {conf}% CI",
        "イベント発現までの期間の中央値と{conf}%信頼区間",
        "사건 발생까지 기간의 중앙값과 {conf}% 신뢰구간",
    ),
    "km.note_no_unit": (
        "+ censored; shaded band: {conf}% CI",
        "+：打ち切り、帯：{conf}%信頼区間",
        "+: 중도절단, 음영: {conf}% 신뢰구간",
    ),
    "km.medians": (
        "Median time to event ({unit}) with {conf}% CI",
        "イベント発現までの期間の中央値（{unit}）と{conf}%信頼区間",
        "사건 발생까지 기간의 중앙값({unit})과 {conf}% 신뢰구간",
    ),
    "km.median_ci": (
        "Median ({conf}% CI)",
        "中央値（{conf}%信頼区間）",
        "중앙값 ({conf}% 신뢰구간)",
    ),
    "km.at": ("{measure} at selected times", "各時点の{measure}", "시점별 {measure}"),
    "km.survival": ("Survival probability", "生存率", "생존율"),
    "km.incidence": ("Cumulative incidence", "累積発生率", "누적 발생률"),
    "km.legend": (
        "{group} (N = {n}): median {median}",
        "{group}（N = {n}）：中央値 {median}",
        "{group} (N = {n}): 중앙값 {median}",
    ),
    "km.note": (
        "+ censored; shaded band: {conf}% CI; median in {unit} ({conf}% CI)",
        "+：打ち切り、帯：{conf}%信頼区間、中央値（{unit}）と{conf}%信頼区間",
        "+: 중도절단, 음영: {conf}% 신뢰구간, 중앙값({unit})과 {conf}% 신뢰구간",
    ),
    "km.cell": ("{group}: {what}", "{group}：{what}", "{group}: {what}"),
    # -- log-rank --------------------------------------------------------------------------
    "logrank.heading": (
        "Log-rank test of {param} by {by}{strata}",
        "{by}別の{param}のログランク検定{strata}",
        "{by}별 {param}의 로그순위 검정{strata}",
    ),
    "logrank.stratified": (", stratified by {vars}", "（{vars}で層別）", " ({vars}로 층화)"),
    "logrank.result": (
        "chi-square = {chi2}, df = {df}, {p}",
        "カイ二乗値 = {chi2}、自由度 = {df}、{p}",
        "카이제곱 = {chi2}, 자유도 = {df}, {p}",
    ),
    "logrank.observed": ("Observed events", "観察イベント数", "관찰 사건 수"),
    "logrank.expected": ("Expected events", "期待イベント数", "기대 사건 수"),
    "logrank.effect": ("Log-rank test", "ログランク検定", "로그순위 검정"),
    # -- Cox -------------------------------------------------------------------------------
    "cox.heading": (
        "Cox proportional hazards model of {param}",
        "{param}のCox比例ハザードモデル",
        "{param}의 Cox 비례위험모형",
    ),
    "cox.adjusted": ("adjusted for {vars}", "調整因子：{vars}", "보정 변수: {vars}"),
    "cox.strata": (
        "baseline hazard stratified by {vars}",
        "ベースラインハザードを{vars}で層別",
        "기저위험을 {vars}로 층화",
    ),
    "cox.pooled": ("one baseline hazard", "共通のベースラインハザード", "공통 기저위험"),
    "cox.ties": ("ties: {ties}", "同順位の処理：{ties}", "동점 처리: {ties}"),
    "cox.converged": (
        "converged in {rounds} rounds",
        "{rounds}ラウンドで収束",
        "{rounds}라운드에서 수렴",
    ),
    "cox.not_converged": (
        "DID NOT CONVERGE in {rounds} rounds",
        "{rounds}ラウンドで収束せず",
        "{rounds}라운드 내 수렴하지 않음",
    ),
    "cox.size": (
        "N = {n}, events = {events}",
        "例数 = {n}、イベント数 = {events}",
        "N = {n}, 사건 수 = {events}",
    ),
    "cox.treatment": ("Treatment effect", "治療効果", "치료 효과"),
    "cox.covariates": ("Covariates (adjustment)", "共変量（調整因子）", "공변량 (보정 변수)"),
    "cox.comparison": ("Comparison", "比較", "비교"),
    "cox.covariate": ("Covariate", "共変量", "공변량"),
    "cox.hr_ci": (
        "Hazard ratio ({conf}% CI)",
        "ハザード比（{conf}%信頼区間）",
        "위험비 ({conf}% 신뢰구간)",
    ),
    "cox.coef": ("Coefficient", "回帰係数", "회귀계수"),
    "cox.se": ("SE", "標準誤差", "표준오차"),
    "cox.per_year": ("{var} (per year)", "{var}（1歳あたり）", "{var} (1세당)"),
    "cox.per_unit": ("{var} (per unit)", "{var}（1単位あたり）", "{var} (1단위당)"),
    "cox.effect": (
        "Hazard ratio, {comparison}",
        "ハザード比、{comparison}",
        "위험비, {comparison}",
    ),
    # -- vaccine efficacy ------------------------------------------------------------------
    "ve.heading": (
        "Vaccine efficacy against {param}: {comparison}",
        "{param}に対するワクチン有効率：{comparison}",
        "{param}에 대한 백신 효능: {comparison}",
    ),
    "ve.hr_heading": (
        "Hazard ratio of {param}: {comparison}",
        "{param}のハザード比：{comparison}",
        "{param}의 위험비: {comparison}",
    ),
    "ve.subgroup": ("Subgroup", "部分集団", "하위군"),
    "ve.site": ("Site {site}", "施設 {site}", "기관 {site}"),
    "ve.ve_ci": ("VE ({conf}% CI)", "VE（{conf}%信頼区間）", "VE ({conf}% 신뢰구간)"),
    "ve.interaction": (
        "Treatment-by-country interaction: {p} (Wald test)",
        "治療と国の交互作用：{p}（Wald検定）",
        "치료-국가 교호작용: {p} (Wald 검정)",
    ),
    "ve.definition": (
        "VE = 1 − hazard ratio of {comparison}, Cox model; {model}",
        "VE = 1 − ハザード比（{comparison}）、Coxモデル：{model}",
        "VE = 1 − 위험비 ({comparison}), Cox 모형: {model}",
    ),
    "ve.model": (
        "Cox model behind the estimate",
        "推定に用いたCoxモデル",
        "추정에 사용한 Cox 모형",
    ),
    "ve.effect": (
        "Vaccine efficacy, {comparison}",
        "ワクチン有効率、{comparison}",
        "백신 효능, {comparison}",
    ),
    "ve.many_sites": (
        "{n} sites: per-site estimates in the report's table",
        "{n}施設：施設別の推定値は報告書の表を参照",
        "{n}개 기관: 기관별 추정치는 보고서의 표 참조",
    ),
    "ve.site_note": (
        "Site rows: each site's own Cox fit, published where the site's policy allows.",
        "施設別の行：各施設が自施設で当てはめたCoxモデル（施設の方針が公開を許す場合）。",
        "기관별 행: 각 기관이 자체 적합한 Cox 모형 (기관 정책이 공개를 허용하는 경우).",
    ),
    # -- forest plots ----------------------------------------------------------------------
    "forest.title_hr": (
        "Treatment effects: hazard ratios with {conf}% CI",
        "治療効果：ハザード比と{conf}%信頼区間",
        "치료 효과: 위험비와 {conf}% 신뢰구간",
    ),
    "forest.title_ve": (
        "Vaccine efficacy by subgroup with {conf}% CI",
        "部分集団別のワクチン有効率と{conf}%信頼区間",
        "하위군별 백신 효능과 {conf}% 신뢰구간",
    ),
    "forest.axis_hr": ("Hazard ratio (log scale)", "ハザード比（対数目盛）", "위험비 (로그 척도)"),
    "forest.axis_ve": ("Vaccine efficacy (%)", "ワクチン有効率（%）", "백신 효능 (%)"),
    "forest.favours": ("favours {arm}", "{arm}が良好", "{arm} 우세"),
    "forest.n_events": ("N / events", "例数／イベント数", "N / 사건 수"),
    "forest.hr_col": ("HR ({conf}% CI)", "HR（{conf}%信頼区間）", "HR ({conf}% 신뢰구간)"),
    "forest.ve_col": ("VE ({conf}% CI)", "VE（{conf}%信頼区間）", "VE ({conf}% 신뢰구간)"),
    # -- convergence -----------------------------------------------------------------------
    "conv.loglik": (
        "{name}: partial log-likelihood",
        "{name}：部分対数尤度",
        "{name}: 부분 로그우도",
    ),
    "conv.step": (
        "{name}: Newton step size",
        "{name}：Newtonステップの大きさ",
        "{name}: 뉴턴 단계 크기",
    ),
    "conv.round": ("Round", "ラウンド", "라운드"),
    "conv.ylog": ("Log-likelihood", "対数尤度", "로그우도"),
    "conv.ystep": ("log10 ||step||", "log10 ||step||", "log10 ||step||"),
    # -- refusals --------------------------------------------------------------------------
    "refused.heading": ("REFUSED: {message}", "拒否：{message}", "거부: {message}"),
    "refused.table": ("Refusals", "拒否", "거부"),
    "col.site": ("Site", "施設", "기관"),
    "col.country": ("Country", "国", "국가"),
    "col.name": ("Name", "名称", "명칭"),
    "col.analysis": ("Analysis", "解析", "분석"),
    "col.rule": ("Rule", "規則", "규칙"),
    "col.reason": ("Reason", "理由", "사유"),
    "col.change": ("Change", "変更内容", "변경 내용"),
    "col.endpoint": ("Endpoint", "評価項目", "평가변수"),
    "col.code": ("Code", "コード", "코드"),
    # -- report ----------------------------------------------------------------------------
    "report.synthetic": (
        "SYNTHETIC DATA: generated by trialfed for demonstration; not data of any real trial.",
        "合成データ：trialfed がデモのために生成したデータであり、実在の試験のデータではない。",
        "합성 데이터: trialfed가 시연용으로 생성한 자료이며 실제 임상시험 자료가 아님.",
    ),
    "report.headline": ("Primary result", "主要な結果", "주요 결과"),
    "report.primary": ("Primary analysis: {analysis}", "主解析：{analysis}", "주 분석: {analysis}"),
    "report.primary_guess": (
        "The plan marks no primary analysis; shown is its most specific treatment-effect estimate.",
        "解析計画に主解析の指定がないため、最も特定的な治療効果の推定値を示す。",
        "분석계획에 주 분석이 지정되지 않아 가장 구체적인 치료 효과 추정치를 제시함.",
    ),
    "report.no_effect": (
        "No analysis of this plan estimates a treatment effect.",
        "この解析計画には治療効果を推定する解析がない。",
        "이 분석계획에는 치료 효과를 추정하는 분석이 없음.",
    ),
    "report.other_effects": (
        "Other treatment-effect estimates",
        "その他の治療効果の推定値",
        "기타 치료 효과 추정치",
    ),
    "report.estimand": ("Estimand", "推定対象", "추정대상모수"),
    "estimand.population": ("Population", "対象集団", "대상 집단"),
    "estimand.variable": ("Variable (endpoint)", "変数（評価項目）", "변수 (평가변수)"),
    "estimand.treatment": ("Treatment", "治療", "치료"),
    "estimand.summary": ("Population-level summary", "集団レベルの要約", "집단 수준 요약"),
    "method.cox": (
        "Cox proportional hazards model ({model})",
        "Cox比例ハザードモデル（{model}）",
        "Cox 비례위험모형 ({model})",
    ),
    "measure.hr": ("Hazard ratio", "ハザード比", "위험비"),
    "measure.ve": (
        "Vaccine efficacy = 1 − hazard ratio",
        "ワクチン有効率 = 1 − ハザード比",
        "백신 효능 = 1 − 위험비",
    ),
    "estimand.summary_value": ("{measure}; {method}", "{measure}；{method}", "{measure}; {method}"),
    "report.data": ("Data", "データ", "자료"),
    "report.sites_countries": (
        "Sites and countries",
        "実施医療機関及び国",
        "임상시험실시기관 및 국가",
    ),
    "report.sites_line": (
        "{n} sites in {countries}: {sites}",
        "{countries}の{n}施設：{sites}",
        "{countries}의 {n}개 기관: {sites}",
    ),
    "report.analysis_set": ("Analysis set", "解析対象集団", "분석군"),
    "report.analysis_set_text": (
        "All subjects in the sites' ADSL, N = {n} ({arms})",
        "各施設のADSLの全被験者、N = {n}（{arms}）",
        "각 기관 ADSL의 전체 대상자, N = {n} ({arms})",
    ),
    "report.cutoff": ("Data cut-off", "データカットオフ日", "자료 마감일"),
    "report.cutoff_missing": (
        "not reported by the sites",
        "施設から報告されていない",
        "기관에서 보고되지 않음",
    ),
    "report.endpoints": ("Endpoints", "評価項目", "평가변수"),
    "report.flow": ("Subject flow per site", "施設別の被験者の内訳", "기관별 대상자 흐름"),
    "flow.subjects": ("Subjects (ADSL)", "被験者数（ADSL）", "대상자 수 (ADSL)"),
    "flow.analysis_set": ("Analysis set", "解析対象", "분석군"),
    "flow.events": ("Events", "イベント", "사건"),
    "flow.censored": ("Censored", "打ち切り", "중도절단"),
    "flow.contributed": ("Contributed", "解析に参加", "분석 참여"),
    "flow.note": (
        "Endpoint {param}. Censored = analysis set − events.",
        "評価項目：{param}。打ち切り = 解析対象 − イベント。",
        "평가변수: {param}. 중도절단 = 분석군 − 사건.",
    ),
    "report.sites_missing": (
        "Sites missing: {sites}",
        "参加しなかった施設：{sites}",
        "누락 기관: {sites}",
    ),
    "report.treatment_effects": ("Treatment effects", "治療効果", "치료 효과"),
    "report.analyses": ("Analyses", "解析", "분석"),
    "report.site_rules": ("Site rules (disclosure control)", "施設の開示規則", "기관 공개 규칙"),
    "report.no_rules": (
        "No site rule changed or refused anything.",
        "施設の規則による変更及び拒否はなかった。",
        "기관 규칙에 따른 변경이나 거부는 없었음.",
    ),
    "report.disclosure_changes": (
        "What the disclosure rules changed",
        "開示規則による変更",
        "공개 규칙에 따른 변경",
    ),
    "report.all_analyses": ("(all)", "（全解析）", "(전체)"),
    "report.diagnostics": (
        "Diagnostics: convergence of the federated Cox models",
        "診断：連合Coxモデルの収束",
        "진단: 연합 Cox 모형의 수렴",
    ),
    "report.provenance": ("Provenance", "実行の記録", "실행 기록"),
    "report.plan": ("Analysis plan (as run)", "解析計画（実行時）", "분석 계획 (실행본)"),
    "report.notation": (
        "Notation: NR not reached; NE not estimable; NA not available; CI confidence interval; "
        "HR hazard ratio.",
        "表記：NR 未到達、NE 推定不能、NA 該当なし、CI 信頼区間、HR ハザード比。",
        "표기: NR 도달하지 않음, NE 추정 불가, NA 해당 없음, CI 신뢰구간, HR 위험비.",
    ),
    "report.notation_ve": (
        "VE vaccine efficacy (1 − HR).",
        "VE ワクチン有効率（1 − HR）。",
        "VE 백신 효능 (1 − HR).",
    ),
    "report.not_tracked": ("not tracked", "記録なし", "기록 안 함"),
    "report.unknown": ("unknown", "不明", "알 수 없음"),
    "report.tracking_off": ("tracking disabled", "記録は無効", "기록 비활성화"),
    "prov.study": ("Study", "試験", "시험"),
    "prov.plan_sha": ("Plan SHA-256", "解析計画のSHA-256", "분석 계획 SHA-256"),
    "prov.engine": ("Engine", "実行エンジン", "실행 엔진"),
    "prov.run_id": ("MLflow run id", "MLflow run ID", "MLflow run ID"),
    "prov.rounds": ("Rounds", "ラウンド数", "라운드 수"),
    "prov.seconds": ("Wall time (s)", "所要時間（秒）", "소요 시간 (초)"),
    "prov.date": ("Report date (UTC)", "報告書の作成日時（UTC）", "보고서 작성 일시 (UTC)"),
    "prov.versions": ("Versions", "バージョン", "버전"),
    "prov.commit": ("Git commit", "Gitコミット", "Git 커밋"),
    "prov.uri": ("MLflow tracking URI", "MLflowトラッキングURI", "MLflow 추적 URI"),
    "prov.language": ("Language", "言語", "언어"),
    # -- console ---------------------------------------------------------------------------
    "console.sites": (
        "Sites contributing: {n} ({sites}); rounds: {rounds}; wall time: {seconds} s",
        "参加施設：{n}（{sites}）、ラウンド数：{rounds}、所要時間：{seconds}秒",
        "참여 기관: {n} ({sites}), 라운드: {rounds}, 소요 시간: {seconds}초",
    ),
    "console.missing": (
        "Site NOT contributing: {site} ({reason})",
        "参加しなかった施設：{site}（{reason}）",
        "참여하지 않은 기관: {site} ({reason})",
    ),
    "console.refused": (
        "Site {site} refused {what} ({rule}): {message}",
        "施設 {site} が {what} を拒否（{rule}）：{message}",
        "기관 {site}이(가) {what} 거부 ({rule}): {message}",
    ),
    "console.the_run": ("the run", "実行全体", "실행 전체"),
    "console.disclosure": (
        "Disclosure rules changed what left the sites ({counts}); see the report",
        "開示規則により施設から出た情報が変更された（{counts}）。報告書を参照",
        "공개 규칙에 따라 기관에서 나간 정보가 변경됨 ({counts}). 보고서 참조",
    ),
    "console.headline": ("Primary result: {text}", "主要な結果：{text}", "주요 결과: {text}"),
}

VARIABLES: dict[str, tuple[str, str, str]] = {
    "TRT01P": ("Treatment (planned)", "投与群（計画）", "투여군 (계획)"),
    "TRT01A": ("Treatment (actual)", "投与群（実際）", "투여군 (실제)"),
    "TRTP": ("Treatment (planned)", "投与群（計画）", "투여군 (계획)"),
    "TRTA": ("Treatment (actual)", "投与群（実際）", "투여군 (실제)"),
    "ARM": ("Arm", "群", "군"),
    "ACTARM": ("Actual arm", "実際の群", "실제 군"),
    "AGE": ("Age", "年齢", "나이"),
    "AGEGR1": ("Age group", "年齢区分", "연령군"),
    "SEX": ("Sex", "性別", "성별"),
    "RACE": ("Race", "人種", "인종"),
    "COUNTRY": ("Country", "国", "국가"),
    "SITE": ("Site", "施設", "기관"),
    "SITEID": ("Site", "施設", "기관"),
}
"""ADaM IG labels of the usual ADSL variables (and the federation's SITE and COUNTRY)."""

LEVELS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("SEX", "M"): ("Male", "男性", "남성"),
    ("SEX", "F"): ("Female", "女性", "여성"),
    ("SEX", "U"): ("Unknown", "不明", "미상"),
    ("COUNTRY", "JP"): ("Japan", "日本", "일본"),
    ("COUNTRY", "JPN"): ("Japan", "日本", "일본"),
    ("COUNTRY", "KR"): ("Korea", "韓国", "한국"),
    ("COUNTRY", "KOR"): ("Korea", "韓国", "한국"),
    ("COUNTRY", "US"): ("United States", "米国", "미국"),
    ("COUNTRY", "USA"): ("United States", "米国", "미국"),
}
"""CDISC controlled terminology that has words in every language (SEX, ISO country codes)."""


def _pick(entry: tuple[str, str, str], lang: str) -> str:
    try:
        return entry[_LANG_INDEX[lang]]
    except KeyError:
        raise ValueError(f"lang must be one of {set(_LANG_INDEX)}; got {lang!r}") from None


def has(key: str) -> bool:
    """The catalogue holds ``key``."""
    return key in MESSAGES


def text(key: str, lang: str) -> str:
    """Message ``key`` in ``lang`` (a KeyError names an unknown key)."""
    return _pick(MESSAGES[key], lang)


def variable(name: str, lang: str) -> str:
    """A variable's label in ``lang``; ``""`` when the catalogue has none."""
    entry = VARIABLES.get(name)
    return _pick(entry, lang) if entry else ""


def level(var: str, value: str, lang: str) -> str:
    """A controlled-terminology level in ``lang`` (``SEX = M``, ``COUNTRY = JP``); ``""``
    otherwise."""
    entry = LEVELS.get((var, value))
    return _pick(entry, lang) if entry else ""
